"""The quickstart data generator: deterministic, well-formed, safe with folders, learnable but not trivial."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from mtbert.data import synthetic
from mtbert.data.synthetic import make_quickstart_data
from mtbert.errors import MtbertError

# Small sizes keep the whole file to a few seconds; the learnability check still needs ~1k rows.
SIZES = {"n_train": 1200, "n_dev": 300, "n_test": 100, "vocab_size": 600}
TINY = {"n_train": 60, "n_dev": 20, "n_test": 20, "vocab_size": 300}
HEADERS = {
    "sentiment": ["id", "sentence", "label"],
    "paraphrase": ["id", "sentence1", "sentence2", "label"],
    "similarity": ["id", "sentence1", "sentence2", "score"],
}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("quickstart") / "data"
    return out, make_quickstart_data(out, seed=0, **SIZES)


def read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "", f"{path} must end with one newline"
    header, *rows = (line.split("\t") for line in lines[:-1])
    return header, rows


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def all_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- determinism -----------------------------------------------------------------------------


def test_same_seed_gives_same_bytes_and_other_seed_differs(tmp_path):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        make_quickstart_data(tmp_path / name, seed=seed, **TINY)
        runs[name] = all_files(tmp_path / name)
    assert runs["a"] == runs["b"]  # tokenizer files included: its training is deterministic too
    assert "tokenizer/tokenizer.json" in runs["a"] and "tokenizer/vocab.txt" in runs["a"]
    for task in HEADERS:
        assert runs["a"][f"{task}/train.tsv"] != runs["c"][f"{task}/train.tsv"]


# --- shape of the files ----------------------------------------------------------------------


def test_summary_row_counts_and_headers(made):
    out, summary = made
    expected = {"train": SIZES["n_train"], "dev": SIZES["n_dev"], "test": SIZES["n_test"]}
    for task, header in HEADERS.items():
        assert summary[task] == expected
        for split, rows_expected in expected.items():
            got_header, rows = read_tsv(out / task / f"{split}.tsv")
            assert got_header == (header if split != "test" else header[:-1])
            assert len(rows) == rows_expected
            # A tab inside a text would add a field; a newline would break a row in two.
            assert all(len(row) == len(got_header) for row in rows)
            assert all(text.strip() and "\r" not in text for row in rows for text in row[1:])
    readme = (out / "README.md").read_text()
    assert "mtbert make-data quickstart --out" in readme and "seed 0" in readme


def test_ids_are_unique_and_named_after_task_and_split(made):
    out, _ = made
    seen = set()
    for task, prefix in synthetic.ID_PREFIX.items():
        for split in synthetic.SPLITS:
            _, rows = read_tsv(out / task / f"{split}.tsv")
            ids = [row[0] for row in rows]
            assert ids[0] == f"{prefix}-{split}-000001"
            assert all(re.fullmatch(rf"{prefix}-{split}-\d{{6}}", i) for i in ids)
            seen.update(ids)
    assert len(seen) == 3 * sum(SIZES[k] for k in ("n_train", "n_dev", "n_test"))


def test_test_sentences_do_not_repeat_train_sentences(made):
    out, _ = made
    for task in HEADERS:
        _, train = read_tsv(out / task / "train.tsv")
        _, test = read_tsv(out / task / "test.tsv")
        texts = {tuple(row[1:len(HEADERS[task]) - 1]) for row in train}
        assert not texts & {tuple(row[1:]) for row in test}


def test_labels_are_in_range_and_roughly_balanced(made):
    out, _ = made
    _, rows = read_tsv(out / "sentiment" / "train.tsv")
    labels = np.array([int(row[2]) for row in rows])
    assert set(labels) == {0, 1, 2}
    assert all(0.25 < (labels == c).mean() < 0.42 for c in (0, 1, 2))

    _, rows = read_tsv(out / "paraphrase" / "train.tsv")
    labels = np.array([int(row[3]) for row in rows])
    assert set(labels) == {0, 1}
    assert 0.35 < labels.mean() < 0.55

    _, rows = read_tsv(out / "similarity" / "train.tsv")
    assert all(re.fullmatch(r"\d\.\d{1,2}", row[3]) for row in rows)
    scores = np.array([float(row[3]) for row in rows])
    assert scores.min() >= 0 and scores.max() <= 5
    counts, _ = np.histogram(scores, bins=5, range=(0, 5))
    assert (counts > 0.08 * len(scores)).all(), f"scores bunch up: {counts}"


# --- tokenizer -------------------------------------------------------------------------------


def test_tokenizer_loads_and_encodes_pairs(made):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    out, summary = made
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert len(tok) == summary["vocab_size"]
    assert SIZES["vocab_size"] * 0.9 <= summary["vocab_size"] <= SIZES["vocab_size"]
    assert tok.pad_token_id == 0 and tok.model_max_length == 128
    assert tok.convert_ids_to_tokens(list(range(5))) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

    _, rows = read_tsv(out / "paraphrase" / "dev.tsv")
    first, second = rows[0][1], rows[0][2]
    enc = tok(first, second)
    ids, types = enc["input_ids"], enc["token_type_ids"]
    sep = ids.index(tok.sep_token_id)
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and ids.count(tok.sep_token_id) == 2
    assert types == [0] * (sep + 1) + [1] * (len(ids) - sep - 1)
    assert tok.unk_token_id not in ids  # every character of the data is in the vocabulary
    decoded = tok.decode(ids[1:sep])
    assert decoded.replace(" ", "") == first.lower().replace(" ", "")
    assert tok(first)["input_ids"] == ids[: sep + 1]


# --- folder safety ---------------------------------------------------------------------------


def test_refuses_a_folder_it_did_not_make(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(MtbertError, match="not empty"):
        make_quickstart_data(user, **TINY)
    assert (user / "notes.txt").read_text() == "keep me" and len(list(user.iterdir())) == 1
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(MtbertError, match="not a folder"):
        make_quickstart_data(tmp_path / "a-file", **TINY)


def test_replaces_its_own_output_and_leaves_nothing_beside(tmp_path, monkeypatch):
    out = tmp_path / "data"
    out.mkdir()  # an empty folder is fine
    make_quickstart_data(out, seed=0, **TINY)
    (out / "stale.txt").write_text("from an older run")
    make_quickstart_data(out, seed=1, **TINY)
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]

    # A failure half-way leaves the previous output as it was and no temporary folder.
    before = all_files(out)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "save_tokenizer", broken)
    with pytest.raises(RuntimeError):
        make_quickstart_data(out, seed=2, **TINY)
    assert all_files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_rejects_bad_sizes(tmp_path):
    with pytest.raises(MtbertError, match="n_dev"):
        make_quickstart_data(tmp_path / "x", n_dev=0)
    with pytest.raises(MtbertError, match="vocab_size"):
        make_quickstart_data(tmp_path / "x", vocab_size=50)
    assert not (tmp_path / "x").exists()


# --- the tasks are learnable but not trivial -------------------------------------------------


def bag_of_words(texts: list[str], vocab: dict[str, int]) -> np.ndarray:
    x = np.zeros((len(texts), len(vocab) + 1))
    x[:, -1] = 1  # bias
    for i, text in enumerate(texts):
        for w in words(text):
            if w in vocab:
                x[i, vocab[w]] = 1
    return x


def logistic_regression_accuracy(train_x, train_y, dev_x, dev_y, classes: int, steps: int = 200) -> float:
    w = np.zeros((train_x.shape[1], classes))
    for _ in range(steps):  # full-batch gradient descent on the softmax cross-entropy
        logits = train_x @ w
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(train_y)), train_y] -= 1
        w -= 0.5 * train_x.T @ p / len(train_y)
    return float(((dev_x @ w).argmax(1) == dev_y).mean())


def keyword_rule(text: str) -> int:
    """Count positive minus negative words, flipping a word right after "not"/"never"."""
    positive = set(synthetic.POSITIVE_ADJECTIVES) | {w for pair in synthetic.POSITIVE_VERBS for w in pair}
    negative = set(synthetic.NEGATIVE_ADJECTIVES) | {w for pair in synthetic.NEGATIVE_VERBS for w in pair}
    score, sign = 0, 1
    for w in words(text):
        if w in ("not", "never"):
            sign = -1
        elif w in positive or w in negative:
            score += sign * (1 if w in positive else -1)
            sign = 1
    return 2 if score > 0 else 0 if score < 0 else 1


def test_sentiment_is_learnable_from_words_but_not_by_keyword_counting(made):
    out, _ = made
    _, train = read_tsv(out / "sentiment" / "train.tsv")
    _, dev = read_tsv(out / "sentiment" / "dev.tsv")
    vocab = {w: i for i, w in enumerate(sorted({w for row in train for w in words(row[1])}))}
    train_y, dev_y = np.array([int(r[2]) for r in train]), np.array([int(r[2]) for r in dev])
    bow = logistic_regression_accuracy(
        bag_of_words([r[1] for r in train], vocab), train_y, bag_of_words([r[1] for r in dev], vocab), dev_y, 3
    )
    rule = float(np.mean([keyword_rule(r[1]) == y for r, y in zip(dev, dev_y, strict=True)]))
    assert bow > 0.5, f"bag-of-words logistic regression only reaches {bow:.2f} (chance 0.33)"
    assert rule < 0.8, f"a negation-aware keyword count already reaches {rule:.2f}"


def test_paraphrase_is_not_decided_by_word_overlap(made):
    out, _ = made
    _, rows = read_tsv(out / "paraphrase" / "train.tsv")
    overlap = np.array([len(set(words(a)) & set(words(b))) / len(set(words(a)) | set(words(b)))
                        for _, a, b, _ in rows])
    labels = np.array([int(r[3]) for r in rows])
    best = max(((overlap >= t) == labels).mean() for t in np.unique(overlap))
    assert best < 0.75, f"a word-overlap threshold reaches {best:.2f}"


def test_similarity_follows_meaning_more_than_overlap(made):
    out, _ = made
    _, rows = read_tsv(out / "similarity" / "train.tsv")
    overlap = [len(set(words(a)) & set(words(b))) / len(set(words(a)) | set(words(b))) for _, a, b, _ in rows]
    corr = np.corrcoef(overlap, [float(r[3]) for r in rows])[0, 1]
    assert 0.2 < corr < 0.9  # related to the words, but synonyms and voice changes blur it
