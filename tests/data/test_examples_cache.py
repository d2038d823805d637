"""The examples cache: a split read once, then memory-mapped; and tokenising it in several processes."""

import datasets
import pytest
from transformers import AutoTokenizer

from mtbert.config import TaskConfig
from mtbert.data import reading
from mtbert.data.encoding import cache_dir, examples_fingerprint, tokenize_split
from mtbert.data.examples_cache import read_split_cached
from mtbert.data.reading import read_split
from mtbert.errors import MtbertError
from mtbert.tasks import resolve_task

TASK = dict(format="tsv", train_file="t.tsv", text_columns=["q"], label_column="y", kind="binary", id_column="id")


def write_rows(path, n, first="a"):
    rows = [f"{i}\t{first if i == 0 else 'the film'} {'was good' if i % 2 else 'was bad'}\t{i % 2}"
            for i in range(n)]
    path.write_text("id\tq\ty\n" + "\n".join(rows) + "\n\n\t\t1\n")  # the last row is skipped (empty text)


def is_memory_mapped(dataset: datasets.Dataset) -> bool:
    return bool(dataset.cache_files) and all(f["filename"].startswith(str(cache_dir())) for f in dataset.cache_files)


def test_a_cached_read_is_the_read_itself_memory_mapped(tmp_path, monkeypatch):
    monkeypatch.setenv("MTBERT_CACHE", str(tmp_path / "cache"))
    write_rows(tmp_path / "t.tsv", 50)
    task = resolve_task("probe", TaskConfig(**TASK))
    direct = read_split(task, "train", tmp_path)
    first = read_split_cached(task, "train", tmp_path)
    entries = list((cache_dir() / "examples").iterdir())
    assert len(entries) == 1 and is_memory_mapped(first.dataset)
    again = read_split_cached(task, "train", tmp_path)
    assert list((cache_dir() / "examples").iterdir()) == entries
    for cached in (first, again):
        assert cached.dataset.to_dict() == direct.dataset.to_dict()
        assert cached.lines.tolist() == direct.lines.tolist() and cached.skipped_lines == direct.skipped_lines == [53]
        assert cached.skip_reason == direct.skip_reason and cached.ids_are_positions == direct.ids_are_positions
        assert cached.fingerprint == examples_fingerprint(direct.dataset)
        assert cached.where(3) == "line 5"
    write_rows(tmp_path / "t.tsv", 50, first="another")  # one changed word: another entry
    changed = read_split_cached(task, "train", tmp_path)
    assert len(list((cache_dir() / "examples").iterdir())) == 2 and changed.dataset["text_a"][0].startswith("another")


def test_a_big_file_is_read_in_chunks_to_the_same_examples(tmp_path, monkeypatch):
    write_rows(tmp_path / "t.tsv", 25)
    task = resolve_task("probe", TaskConfig(**TASK))
    whole = read_split(task, "train", tmp_path)
    monkeypatch.setattr(reading, "CHUNK", 4)
    chunked = read_split(task, "train", tmp_path)
    assert chunked.dataset.to_dict() == whole.dataset.to_dict() and chunked.lines.tolist() == whole.lines.tolist()


def test_several_tokenising_workers_give_the_same_ids(tmp_path, monkeypatch, tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    write_rows(tmp_path / "t.tsv", 2100)
    task = resolve_task("probe", TaskConfig(**TASK))
    monkeypatch.setenv("MTBERT_CACHE", str(tmp_path / "one"))
    one = tokenize_split(read_split_cached(task, "train", tmp_path), task, tok, 8, progress=False)
    monkeypatch.setenv("MTBERT_CACHE", str(tmp_path / "two"))
    two = tokenize_split(read_split_cached(task, "train", tmp_path), task, tok, 8, progress=False, workers=2)
    entry = next((cache_dir() / "tokenized").iterdir())
    assert len(list(entry.glob("part*.arrow"))) == 2  # written by two processes
    assert two.to_dict() == one.to_dict() and is_memory_mapped(two)
    reloaded = tokenize_split(read_split_cached(task, "train", tmp_path), task, tok, 8, progress=False)
    assert reloaded["input_ids"] == one["input_ids"]


def test_an_unwritable_cache_is_one_line_naming_it(tmp_path, monkeypatch):
    write_rows(tmp_path / "t.tsv", 5)
    (tmp_path / "blocked").write_text("")
    monkeypatch.setenv("MTBERT_CACHE", str(tmp_path / "blocked" / "cache"))
    task = resolve_task("probe", TaskConfig(**TASK))
    with pytest.raises(MtbertError, match=r"blocked/cache/examples: cannot write the data cache \(.*\); set "
                                          r"MTBERT_CACHE"):
        read_split_cached(task, "train", tmp_path)
