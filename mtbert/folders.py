"""Folders given to mtbert (a model, a tokenizer, an exported model) are data: nothing in them runs.

Hugging Face folders can ask for code: an `auto_map` in config.json or tokenizer_config.json names
Python files beside it that transformers would import (with trust_remote_code, or after asking on
standard input). mtbert refuses such a folder with one line instead, and never passes
trust_remote_code=True. What cannot be read (a symlink loop, a file where a folder should be) is named.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from mtbert.errors import MtbertError

CODE_CONFIGS = ("config.json", "tokenizer_config.json")
"The files in which transformers looks for `auto_map` (custom code to import)."


def unreadable(path: Path) -> str | None:
    """Why `path` cannot be opened ("a symlink loop", "a broken symlink"), or None if it can or is absent."""
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symlink loop"
        if path.is_symlink():
            return "a broken symlink"
        if error.errno not in (errno.ENOENT, errno.ENOTDIR):
            return error.strerror or str(error)
    return None


def require_folder(path: Path, what: str) -> None:
    """Refuse a `what` (e.g. "model folder") that is missing, a symlink loop or a file."""
    problem = unreadable(path)
    if problem:
        raise MtbertError(f"{path}: the {what} is {problem}")
    if not path.exists():
        raise MtbertError(f"{path}: {what} not found")
    if not path.is_dir():
        raise MtbertError(f"{path}: expected a {what}, got a file")


def looks_local(name: str | os.PathLike[str]) -> bool:
    """A folder on this machine (or a link pretending to be one), rather than a hub name."""
    path = Path(name)
    return path.exists() or path.is_symlink()


def refuse_custom_code(folder: Path) -> None:
    """Refuse a folder whose config.json or tokenizer_config.json asks for code (`auto_map`)."""
    for name in CODE_CONFIGS:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # the loader that reads it reports what is wrong with it
        if isinstance(data, dict) and data.get("auto_map"):
            classes = ", ".join(sorted(data["auto_map"])) if isinstance(data["auto_map"], dict) else "classes"
            raise MtbertError(f"{path}: asks for custom code (auto_map: {classes}); mtbert never runs code from a "
                              f"model or tokenizer folder. Remove auto_map to load it as a plain BERT folder")
