import dataclasses

import datasets
import pytest
from transformers import AutoTokenizer

from mtbert.config import HubConfig, PromptConfig, TaskConfig
from mtbert.data.collate import collate
from mtbert.data.encoding import cache_dir, examples_fingerprint, tokenize_split
from mtbert.data.reading import read_split
from mtbert.errors import MtbertError
from mtbert.tasks import Task, resolve_task


def test_cross_and_siamese_columns(cs224n_dir, tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cross = resolve_task("quora", TaskConfig())
    data = read_split(cross, "dev", cs224n_dir)
    enc = tokenize_split(data, cross, tok, 32)
    row = enc[0]
    assert row["input_ids"][0] == tok.cls_token_id and row["input_ids"].count(tok.sep_token_id) == 2
    assert set(row["token_type_ids"]) == {0, 1}
    siamese = resolve_task("quora", TaskConfig(pair_encoding="siamese"))
    enc = tokenize_split(data, siamese, tok, 32)
    assert {"input_ids_b", "token_type_ids_b"} <= set(enc.column_names)
    assert enc[0]["input_ids"].count(tok.sep_token_id) == 1


def test_truncation_and_cache_reuse(cs224n_dir, tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MTBERT_CACHE", str(tmp_path / "own-cache"))  # the session's cache holds other tests' sst
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    task = resolve_task("sst", TaskConfig())
    data = read_split(task, "train", cs224n_dir)
    enc = tokenize_split(data, task, tok, 4)
    assert max(len(x) for x in enc["input_ids"]) == 4
    entries = sorted((cache_dir() / "tokenized").glob("sst-*/part.arrow"))
    assert len(entries) == 1
    written = entries[0].stat().st_mtime_ns
    again = tokenize_split(read_split(task, "train", cs224n_dir), task, tok, 4)
    assert again["input_ids"] == enc["input_ids"]
    assert sorted((cache_dir() / "tokenized").glob("sst-*/part.arrow")) == entries  # reused, not rewritten
    assert entries[0].stat().st_mtime_ns == written
    tokenize_split(data, task, tok, 8)  # another max_length is another cache entry
    assert len(list((cache_dir() / "tokenized").glob("sst-*/part.arrow"))) == 2


def test_changed_file_is_tokenised_again(cs224n_dir, tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    task = resolve_task("sst", TaskConfig())
    path = cs224n_dir / "cs224n" / "ids-sst-dev.csv"
    path.write_text("\tid\tsentence\tsentiment\n0\ta\tthe film\t1\n")
    before = tokenize_split(read_split(task, "dev", cs224n_dir), task, tok, 32)
    path.write_text("\tid\tsentence\tsentiment\n0\ta\tthe dull film\t1\n")
    after = tokenize_split(read_split(task, "dev", cs224n_dir), task, tok, 32)
    assert len(after["input_ids"][0]) == len(before["input_ids"][0]) + 1


def test_collate_pads_dynamically():
    rows = {"input_ids": [[2, 5, 3], [2, 5, 6, 7, 3]], "token_type_ids": [[0, 0, 0], [0, 0, 0, 1, 1]],
            "label": [1, 0]}
    batch = collate(rows, pad_id=0)
    assert batch["input_ids"].shape == (2, 5)
    assert batch["input_ids"][0].tolist() == [2, 5, 3, 0, 0]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].dtype.is_floating_point is False
    assert collate({**rows, "label": [1.5, 2.0]}, 0)["labels"].dtype.is_floating_point


def test_tokenizer_fixture_knows_the_words(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert tok.unk_token_id not in tok("the film was great")["input_ids"]


# ---------------------------------------------------------------------------------------------
# The cache key: a change to any setting that changes what is read, or how it is encoded, is a miss.

ROWS = [("a1", '"the film"', "was great", "pos", "neg", "0"),
        ("a2", "a dull plot", "the end", "neg", "pos", "1"),
        ("a3", "what a story", "i do", "pos", "neg", "2")]
HEADER = ("id", "q", "c", "y", "z", "n")


def write_table(path, rows, header=HEADER):
    lines = (["\t".join(header)] if header else []) + ["\t".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


SINGLE = dict(format="tsv", train_file="t.tsv", text_columns=["q"], label_column="y", kind="classes",
              label_names=["neg", "pos"], id_column="id")
PAIR = {**SINGLE, "text_columns": ["q", "c"]}
NUMERIC = {**SINGLE, "label_column": "n", "label_names": None, "num_labels": 3}
HEADERLESS = {**SINGLE, "train_file": "headerless.tsv", "columns": list(HEADER)}
HUB = dict(format="glue", train_file=None, hub=HubConfig(path="fake", name="one", text_columns=["s"]),
           text_columns=["sentence"], label_column="label", kind="binary")

# Task field -> (the task's settings, the change to one of them): each change alters the tokenised split.
CHANGES = {
    "format": (SINGLE, {"format": "glue"}),  # glue keeps the quotes around "the film"
    "files": (SINGLE, {"train_file": "other.tsv"}),
    "text_columns": (SINGLE, {"text_columns": ["c"]}),
    "label_column": (SINGLE, {"label_column": "z"}),
    "label_names": (SINGLE, {"label_names": ["pos", "neg"]}),
    "id_column": (SINGLE, {"id_column": "c"}),
    "columns": (HEADERLESS, {"columns": ["id", "c", "q", "y", "z", "n"]}),
    "kind": (NUMERIC, {"kind": "regression", "num_labels": None}),
    "hub": (HUB, {"hub": HubConfig(path="fake", name="two", text_columns=["s"])}),
    "prompt": (SINGLE, {"prompt": PromptConfig(question="is it good ?", context="{a}")}),
    "pair_encoding": (PAIR, {"pair_encoding": "siamese"}),
}
# Fields that only check what is read: the file reads the same or not at all (tested below).
CHECKED_ONLY = {"num_labels", "label_range"}
# Fields used after tokenising (model, loss, sampling, scoring), or only to name the cache file.
NOT_READ = {"name", "metrics", "main_metric", "pooler", "pooler_options", "siamese_regression", "head", "batch_size",
            "loss_weight", "max_train_examples", "class_balanced", "eval_examples", "eval_every",
            "streaming"}  # streaming: a streamed train split is tokenised per batch, never cached


def test_every_task_field_is_accounted_for():
    """A new Task field must be placed here, with a change that shows the cache sees it if it is read."""
    fields = {f.name for f in dataclasses.fields(Task)}
    assert set(CHANGES) | CHECKED_ONLY | NOT_READ == fields
    assert not set(CHANGES) & (CHECKED_ONLY | NOT_READ) and not CHECKED_ONLY & NOT_READ


@pytest.fixture
def table_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MTBERT_CACHE", str(tmp_path / "cache"))  # this test's entries only
    write_table(tmp_path / "t.tsv", ROWS)
    write_table(tmp_path / "headerless.tsv", ROWS, header=None)
    write_table(tmp_path / "other.tsv", [(*ROWS[0][:1], "the story", *ROWS[0][2:]), *ROWS[1:]])

    def fake_load_dataset(path, name=None, split=None):
        sentences = ["the film", "a dull plot"] if name == "one" else ["the story", "a fine plot"]
        return datasets.Dataset.from_dict({"s": sentences, "label": [1, 0], "idx": [0, 1]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return tmp_path


def encoded(fields, data_dir, tok, use_cache=True):
    """The tokenised train split, with its column types (0 == 0.0, but an int label is not a score)."""
    task = resolve_task("probe", TaskConfig(**fields))
    result = tokenize_split(read_split(task, "train", data_dir), task, tok, 16, use_cache=use_cache, progress=False)
    return result.features.to_dict(), result.to_dict()


def cache_entries():
    return set((cache_dir() / "tokenized").glob("probe-*"))


@pytest.mark.parametrize("name", list(CHANGES))
def test_a_changed_setting_is_a_cache_miss(name, table_dir, tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    fields, change = CHANGES[name]
    before = encoded(fields, table_dir, tok)
    entries = cache_entries()
    assert encoded(fields, table_dir, tok) == before and cache_entries() == entries  # a hit: reused
    after = encoded({**fields, **change}, table_dir, tok)
    assert len(cache_entries() - entries) == 1  # a miss: a new entry
    fresh = encoded({**fields, **change}, table_dir, tok, use_cache=False)
    assert fresh != before, f"changing {name} must change the tokenised split for this test to mean anything"
    assert after == fresh


@pytest.mark.parametrize(("fields", "change"), [({**NUMERIC, "num_labels": 3}, {"num_labels": 2}),
                                                ({**NUMERIC, "kind": "regression", "num_labels": None,
                                                  "label_range": [0.0, 5.0]}, {"label_range": [0.0, 1.0]})])
def test_a_checking_setting_still_checks_with_a_cache(fields, change, table_dir, tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    encoded(fields, table_dir, tok)
    with pytest.raises(MtbertError, match=r"t.tsv:4: .*'?2"):
        encoded({**fields, **change}, table_dir, tok)


def test_examples_fingerprint_follows_a_selection():
    data = datasets.Dataset.from_dict({"id": ["a", "b"], "text_a": ["x", "y"]})
    assert examples_fingerprint(data.select([1, 0])) == examples_fingerprint(
        datasets.Dataset.from_dict({"id": ["b", "a"], "text_a": ["y", "x"]}))
    assert examples_fingerprint(data) != examples_fingerprint(data.select([1, 0]))
    as_large = data.cast_column("id", datasets.Value("large_string"))
    assert examples_fingerprint(as_large) != examples_fingerprint(data)  # column types are part of it
