"""The harness of the bad-input corpus: every bad input ends in one clear line and loses nothing.

Each case runs the real command line in-process on an input that is wrong in one way (a damaged data
file, a recipe with a bad key, a hostile model folder, an out-of-range option) and asserts what the
project guarantees for all of them:

- a non-zero exit status, through the CLI's own error path (never an exception escaping the command);
- at most a few lines of message, no traceback, and the message names the file, line, key or option;
- every file under the watched folders byte-identical afterwards (nothing replaced, truncated or removed).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from typer.testing import CliRunner

from mtbert.cli import app

MAX_LINES = 4


def snapshot(*roots: Path) -> dict[str, bytes | str]:
    """Every file (bytes) and symlink (its target) under the roots, by path."""
    seen: dict[str, bytes | str] = {}
    for root in roots:
        root = Path(root)
        if root.is_symlink() or root.is_file():
            seen[str(root)] = os.readlink(root) if root.is_symlink() else root.read_bytes()
            continue
        for folder, dirs, names in os.walk(root, followlinks=False):
            for name in names + [d for d in dirs if (Path(folder) / d).is_symlink()]:
                path = Path(folder) / name
                seen[str(path)] = os.readlink(path) if path.is_symlink() else path.read_bytes()
    return seen


def fails_cleanly(args: Iterable[object], *, names: Iterable[str], watch: Iterable[Path] = (),
                  input: str | bytes | None = None, max_lines: int = MAX_LINES) -> str:
    """Run `mtbert ARGS`; assert a clean failure that names each of `names`, with `watch` untouched.

    Returns the message, for cases that check more of it."""
    watch = list(watch)
    before = snapshot(*watch)
    result = CliRunner().invoke(app, [str(a) for a in args], input=input, prog_name="mtbert")
    message = result.output.strip()
    assert result.exit_code not in (0, None), f"exit status {result.exit_code} for a bad input:\n{message}"
    assert isinstance(result.exception, SystemExit), (
        f"an exception escaped the command: {result.exception!r}\n{message}")
    assert "Traceback" not in message, message
    lines = message.splitlines()
    assert 1 <= len(lines) <= max_lines, f"{len(lines)} lines of message:\n{message}"
    for name in names:
        assert str(name) in message, f"the message does not name {name!r}:\n{message}"
    after = snapshot(*watch)
    changed = sorted(p for p in before if after.get(p) != before[p])
    assert not changed, f"changed or removed by a failed command: {changed}"
    return message
