"""Strict UTF-8: a byte-order mark is dropped, anything else that is not UTF-8 text names its offset."""

import pytest

from mtbert.errors import MtbertError
from mtbert.textfiles import decode_text, read_text


def test_utf8_with_or_without_a_byte_order_mark():
    assert decode_text("naïve\nrésumé".encode(), "f") == "naïve\nrésumé"
    assert decode_text(b"\xef\xbb\xbfa\tb\n", "f") == "a\tb\n"


@pytest.mark.parametrize(("data", "message"), [
    ("ab\ncafé".encode("latin-1"), r"f:2: not UTF-8 text: byte 0xe9 at offset 6"),
    (b"\xef\xbb\xbfok\n\xc3", r"f:2: not UTF-8 text: byte 0xc3 at offset 6"),  # a sequence cut short
    ("hi".encode("utf-16"), r"f:1: not UTF-8 text: byte 0xff at offset 0"),
    ("a\nhi".encode("utf-16-le"), r"f:1: not a text file: a NUL byte at offset 1"),
    (b"ok\n\x00\xff", r"f:2: not a text file: a NUL byte at offset 3"),  # the first problem is named
])
def test_anything_else_names_the_first_bad_byte(data, message):
    with pytest.raises(MtbertError, match=message):
        decode_text(data, "f")


def test_read_text_names_the_file(tmp_path):
    (tmp_path / "t.txt").write_bytes("é".encode("cp1252"))
    with pytest.raises(MtbertError, match=r"t.txt:1: not UTF-8 text: byte 0xe9 at offset 0"):
        read_text(tmp_path / "t.txt")
    with pytest.raises(MtbertError, match=r"absent.txt: file not found"):
        read_text(tmp_path / "absent.txt")
    with pytest.raises(MtbertError, match=r": the file is a folder, not a file"):
        read_text(tmp_path)
