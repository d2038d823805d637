from transformers import AutoTokenizer

from mtbert.config import TaskConfig
from mtbert.data.collate import collate
from mtbert.data.encoding import cache_dir, tokenize_split
from mtbert.data.reading import read_split
from mtbert.tasks import resolve_task


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


def test_truncation_and_cache_reuse(cs224n_dir, tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    task = resolve_task("sst", TaskConfig())
    data = read_split(task, "train", cs224n_dir)
    enc = tokenize_split(data, task, tok, 4)
    assert max(len(x) for x in enc["input_ids"]) == 4
    files = sorted((cache_dir() / "tokenized").glob("sst-*.arrow"))
    assert len(files) == 1
    again = tokenize_split(read_split(task, "train", cs224n_dir), task, tok, 4)
    assert again["input_ids"] == enc["input_ids"]
    assert sorted((cache_dir() / "tokenized").glob("sst-*.arrow")) == files  # reused, not rewritten
    tokenize_split(data, task, tok, 8)  # another max_length is another cache entry
    assert len(list((cache_dir() / "tokenized").glob("sst-*.arrow"))) == 2


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
