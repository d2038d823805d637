"""Files written whole or not at all: through a temporary file in the same folder, then renamed over the
target, so a crash never leaves half a checkpoint, table or image.

A write that fails (a full disk, a read-only folder, a parent that is a file) is an MtbertError naming
the path, and the file that was there before is left as it was: the rename is the last thing done.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from mtbert.errors import MtbertError


class WriteError(MtbertError):
    """A file or folder could not be written: `path` and the system's `reason` (e.g. No space left on device)."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: cannot write ({reason})")


def cannot_write(path: str | os.PathLike[str], error: BaseException) -> WriteError:
    """The one-line error for a failed write of `path`."""
    if isinstance(error, WriteError):
        return WriteError(path, error.reason)
    if isinstance(error, OSError) and error.strerror:
        return WriteError(path, error.strerror)
    lines = str(error).strip().splitlines()
    return WriteError(path, lines[0] if lines else type(error).__name__)


def make_folder(path: str | os.PathLike[str]) -> None:
    """mkdir -p, or an MtbertError naming the folder (a parent that is a file, no permission, a full disk)."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise MtbertError(f"{path}: exists and is not a folder") from None
    except OSError as error:
        raise cannot_write(path, error) from None


def write_atomically(target: Path, write: Callable[[str], object]) -> None:
    """Write through a temporary file in the same folder, then rename it over the target."""
    if target.is_dir():
        raise MtbertError(f"{target}: is a folder; expected a file name")
    try:
        handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as error:
        raise cannot_write(target, error) from None
    os.close(handle)
    try:
        write(tmp)
        # mkstemp creates owner-only files; a saved model should be as readable as any output.
        os.chmod(tmp, 0o644)
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, target)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise cannot_write(target, error) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    path = Path(path)
    make_folder(path.parent)
    write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    """Like write_text_atomically, for images and other bytes: the file is whole or absent."""
    path = Path(path)
    make_folder(path.parent)
    write_atomically(path, lambda tmp: Path(tmp).write_bytes(data))


def write_tensors_atomically(path: str | os.PathLike[str], tensors: dict, metadata: dict[str, str]) -> None:
    """A safetensors file, whole or absent; a failed write is an MtbertError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    def write(tmp: str) -> None:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except SafetensorError as error:  # its I/O errors (a full disk) come as this type, not OSError
            raise OSError(errno.EIO, str(error).strip().splitlines()[0], tmp) from None

    write_atomically(Path(path), write)


def check_output_file(path: str | os.PathLike[str], option: str) -> None:
    """Refuse, before any work, an output file that cannot be one: a folder, a symlink loop, a path under
    a file."""
    path = Path(path)
    if path.is_dir():
        raise MtbertError(f"{option} {path}: is a folder; give a file name (e.g. {path / 'out.json'})")
    _check_folders_above(path, option, include_self=False)


def check_output_folder(path: str | os.PathLike[str], option: str) -> None:
    """Refuse, before any work, an output folder that is a file, a symlink loop or lies under a file."""
    _check_folders_above(Path(path), option, include_self=True)


def _check_folders_above(path: Path, option: str, include_self: bool) -> None:
    from mtbert.folders import unreadable

    for candidate in ((path,) if include_self else ()) + tuple(path.parents):
        problem = unreadable(candidate)
        if problem:
            raise MtbertError(f"{option} {path}: {candidate} is {problem}")
        if candidate.exists():
            if not candidate.is_dir():
                raise MtbertError(f"{option} {path}: exists and is not a folder" if candidate == path
                                  else f"{option} {path}: {candidate} is not a folder")
            return


def json_text(data: object, indent: int | None = None) -> str:
    """JSON that every reader accepts: NaN and infinity (a correlation of constant predictions, an overflowed
    loss) are not JSON, so they are written as null; `score` reads them back as NaN."""
    def finite(value: object) -> object:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(data), indent=indent, allow_nan=False)


def score(value: float | None) -> float:
    """A score read back from json_text: null (a non-finite score) is NaN."""
    return math.nan if value is None else float(value)



def wrote(existed: bool) -> str:
    """How a command reports a file it wrote: a file it replaced is said to be replaced."""
    return "replaced" if existed else "wrote"
