"""Strict YAML reading: UTF-8 only, no key twice, aliases bounded, every problem one line naming the file."""

import os
import time

import pytest
import yaml

from mtbert import yamlfile
from mtbert.errors import MtbertError

LAUGHS = "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))


def test_a_duplicate_key_names_both_lines_but_merge_keys_may_be_overridden():
    with pytest.raises(yamlfile.DuplicateKeyError) as error:
        yamlfile.parse("a: 1\nb:\n  c: 2\n  d: 3\n  c: 4\n")
    assert error.value.problem.startswith("key 'c' appears twice in one mapping (first on line 3)")
    assert error.value.problem_mark.line + 1 == 5
    with pytest.raises(yamlfile.DuplicateKeyError, match="key '1.0' appears twice"):
        yamlfile.parse("{1: a, 1.0: b}")  # equal keys written differently are still one key
    data, _ = yamlfile.parse("base: &b {x: 1, y: 2}\nd: {<<: *b, x: 3}\n")
    assert data["d"] == {"x": 3, "y": 2}


def test_aliases_are_counted_expanded_and_bounded():
    data, node = yamlfile.parse("a: &a [1, 2]\nb: [*a, *a, *a]\n")
    assert data["b"] == [[1, 2]] * 3
    # 1 mapping + 2 keys + a (3 values) + b (1 list + 3 x 3 values)
    assert yamlfile.check_expansion(node) == 1 + 2 + 3 + 1 + 9
    with pytest.raises(yamlfile.LimitError, match="more than 12 values"):
        yamlfile.check_expansion(node, limit=12)


def test_billion_laughs_is_refused_in_milliseconds():
    started = time.perf_counter()
    with pytest.raises(yamlfile.LimitError) as error:
        yamlfile.parse(LAUGHS)
    assert time.perf_counter() - started < 0.5
    assert "more than 100,000 values" in error.value.problem and error.value.problem_mark.line + 1 == 6  # l5


@pytest.mark.parametrize("text,problem", [
    ("a: &a [1, *a]\n", "contains it"),
    ("a: &a {b: *a}\n", "contains it"),
    ("a: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    ("a: " + "9" * 5000 + "\n", "cannot be read"),
])
def test_documents_that_cannot_be_read_in_bounded_time_are_refused(text, problem):
    with pytest.raises(yamlfile.LimitError, match=problem):
        yamlfile.parse(text)


def test_load_file_puts_every_problem_on_one_line_naming_the_file(tmp_path):
    cases = {"laughs": LAUGHS, "nul": "a: 1\nb: x\x00y\n", "syntax": "a: [1,\n", "tab": "a:\n\tb: 1\n",
             "dup": "a: 1\na: 2\n", "tag": "a: !!python/object:os.system ls\n"}
    for name, text in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        with pytest.raises(MtbertError) as error:
            yamlfile.load_file(path, "recipe file")
        message = str(error.value)
        assert message.startswith(f"{path}:") and "\n" not in message, message
    with pytest.raises(MtbertError, match=r"nul.yaml:2: not a text file: a NUL byte at offset 9"):
        yamlfile.load_file(tmp_path / "nul.yaml", "recipe file")


def test_read_text_refuses_what_is_not_a_readable_text_file(tmp_path, monkeypatch):
    with pytest.raises(MtbertError, match=r"absent.yaml: recipe file not found$"):
        yamlfile.read_text(tmp_path / "absent.yaml", "recipe file")
    with pytest.raises(MtbertError, match=r"tmp.*: the recipe file is a folder, not a file$"):
        yamlfile.read_text(tmp_path, "recipe file")
    os.mkfifo(tmp_path / "pipe")  # reading it would block forever
    with pytest.raises(MtbertError, match=r"pipe: the recipe file is not a regular file$"):
        yamlfile.read_text(tmp_path / "pipe", "recipe file")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(MtbertError, match=r"loop: cannot read the recipe file \(Too many levels of symbolic links\)"):
        yamlfile.read_text(tmp_path / "loop", "recipe file")
    (tmp_path / "big.yaml").write_text("a: 1\n" * 10)
    monkeypatch.setattr(yamlfile, "MAX_BYTES", 20)
    with pytest.raises(MtbertError, match=r"big.yaml: the recipe file holds 50 bytes, more than 20"):
        yamlfile.load_file(tmp_path / "big.yaml", "recipe file")


def test_what_parse_returns_for_an_empty_document():
    assert yamlfile.parse("") == (None, None)
    assert yamlfile.parse("# only a comment\n") == (None, None)
    data, node = yamlfile.parse("a: [1, 2]\n")
    assert data == {"a": [1, 2]} and isinstance(node, yaml.MappingNode)
