"""Text files read strictly as UTF-8: a file that is not UTF-8 text is one error, never a guess.

A byte-order mark at the start is allowed and dropped (GLUE's MRPC files begin with one). Any byte
sequence that is not UTF-8, and any NUL byte (UTF-16 text and binary files are full of them, and valid
UTF-8 text never holds one), is an error naming the file, the byte's offset and its line, so that a
Latin-1 file, a UTF-16 export or a gzip archive given as data is reported instead of misread.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from mtbert.errors import MtbertError


def read_text(path: str | Path) -> str:
    """The file's text; a folder, an unreadable file or one that is not UTF-8 text is an MtbertError."""
    path = Path(path)
    if path.is_dir():
        raise MtbertError(f"{path}: is a folder, not a text file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MtbertError(f"{path}: file not found") from None
    except OSError as e:
        raise MtbertError(f"{path}: cannot be read: {e.strerror or type(e).__name__}") from None
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
        raise MtbertError(f"{source}: not a text file: a NUL byte at offset {nul} (line {_line(data, nul)}); "
                          f"binary data, or UTF-16 text (save it as UTF-8)")
    if bad is not None:
        raise MtbertError(f"{source}: not UTF-8 text: byte 0x{data[bad]:02x} at offset {bad} "
                          f"(line {_line(data, bad)}); save the file as UTF-8")
    return text


def _line(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1
