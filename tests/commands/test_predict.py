"""`predict`'s input: sentences read strictly as UTF-8 from a file or a pipe, split at newlines only."""

import io
import sys

import pytest

from mtbert.commands.predict import read_input
from mtbert.errors import MtbertError


def test_a_file_is_read_as_utf8_lines(tmp_path):
    (tmp_path / "in.txt").write_bytes("\ufeffa café\u2028still the first\r\nsecond\n".encode())
    lines, source = read_input(tmp_path / "in.txt")
    assert list(lines) == ["a café\u2028still the first\r\n", "second\n"] and source == str(tmp_path / "in.txt")


def test_a_file_that_is_not_utf8_or_not_a_file(tmp_path):
    (tmp_path / "in.txt").write_bytes("ok\nun café\n".encode("latin-1"))
    with pytest.raises(MtbertError, match=r"in.txt:2: not UTF-8 text: byte 0xe9 at offset 9"):
        read_input(tmp_path / "in.txt")
    with pytest.raises(MtbertError, match=r": the input file is a folder, not a file"):
        read_input(tmp_path)
    with pytest.raises(MtbertError, match=r"absent.txt: input file not found"):
        read_input(tmp_path / "absent.txt")


def test_piped_input_is_utf8_too(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("un café\n".encode("latin-1")), encoding="latin-1"))
    with pytest.raises(MtbertError, match=r"<stdin>:1: not UTF-8 text: byte 0xe9 at offset 6"):
        read_input(None)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("un café\n".encode())))
    lines, source = read_input(None)
    assert list(lines) == ["un café\n"] and source == "<stdin>"
