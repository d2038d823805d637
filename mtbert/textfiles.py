"""Text files read strictly as UTF-8: a file that is not UTF-8 text is one error, never a guess.

A byte-order mark at the start is allowed and dropped (GLUE's MRPC files begin with one). Any byte
sequence that is not UTF-8, and any NUL byte (UTF-16 text and binary files are full of them, and valid
UTF-8 text never holds one), is an error naming the file, the byte's offset and its line, so that a
Latin-1 file, a UTF-16 export or a gzip archive given as data is reported instead of misread.
"""

from __future__ import annotations

import codecs
import stat
from pathlib import Path

from mtbert.errors import MtbertError


def read_text(path: str | Path, what: str = "file", max_bytes: int | None = None) -> str:
    """The text of a file the user named as `what` (e.g. "recipe file"); one line naming the file when it is
    missing, a folder, not a regular file, larger than `max_bytes`, unreadable or not UTF-8 text."""
    path = Path(path)
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise MtbertError(f"{path}: the {what} is a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise MtbertError(f"{path}: the {what} is not a regular file")
        if max_bytes is not None and info.st_size > max_bytes:
            raise MtbertError(f"{path}: the {what} holds {info.st_size:,} bytes, more than {max_bytes:,}: "
                              f"is this the right file?")
        with open(path, "rb") as file:
            data = file.read() if max_bytes is None else file.read(max_bytes + 1)
    except FileNotFoundError:
        raise MtbertError(f"{path}: {what} not found") from None
    except OSError as e:
        raise MtbertError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    return decode_text(data, str(path))


def decode_text(data: bytes, source: str) -> str:
    """`data` decoded as UTF-8 without a leading byte-order mark; `source` names it in an error."""
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    bad = None
    try:
        text = data[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        bad = start + e.start
    nul = data.find(b"\x00", start)  # NUL is never part of a multi-byte UTF-8 sequence: a byte search is exact
    if nul >= 0 and (bad is None or nul < bad):
        raise MtbertError(f"{source}:{_line(data, nul)}: not a text file: a NUL byte at offset {nul}; "
                          f"binary data, or UTF-16 text (save it as UTF-8)")
    if bad is not None:
        raise MtbertError(f"{source}:{_line(data, bad)}: not UTF-8 text: byte 0x{data[bad]:02x} at offset {bad}; "
                          f"save the file as UTF-8")
    return text


def _line(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1
