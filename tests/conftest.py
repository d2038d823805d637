"""Fixtures the tests share: a tiny tokenizer and small data files in the real formats, made here."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

WORDS = ("the a film movie plot actor was is not very good bad great awful fine dull moving story "
         "what how why where can i do you find dress party question answer man woman dog cat "
         "runs plays eats sings on stage guitar piano food park").split()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test writes its tokenisation cache under a temporary folder, never the user's."""
    monkeypatch.setenv("MTBERT_CACHE", str(tmp_path_factory.getbasetemp() / "mtbert-cache"))
    monkeypatch.delenv("MTBERT_DATA_DIR", raising=False)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    from mtbert.data.synthetic import save_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "?", ",", "."]
    save_tokenizer({token: i for i, token in enumerate(tokens)}, folder)
    return folder


def sentence(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, n)))


def write_cs224n(root: Path, n: int = 40, seed: int = 0) -> Path:
    """cs224n-format files (TSV with CSV quoting, a leading unnamed index column) under root/cs224n."""
    rng = random.Random(seed)
    folder = root / "cs224n"
    folder.mkdir(parents=True, exist_ok=True)

    def write(name: str, header: list[str], rows: list[list]) -> None:
        lines = ["\t".join(header)] + ["\t".join(str(c) for c in [i, *r]) for i, r in enumerate(rows)]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")

    for split in ("train", "dev"):
        write(f"ids-sst-{split}.csv", ["", "id", "sentence", "sentiment"],
              [[f"s{split}{i}", sentence(rng), rng.randrange(5)] for i in range(n)])
        write(f"quora-{split}.csv", ["", "id", "sentence1", "sentence2", "is_duplicate"],
              [[f"q{split}{i}", sentence(rng), sentence(rng), f"{rng.randrange(2)}.0"] for i in range(n)])
        write(f"sts-{split}.csv", ["", "id", "sentence1", "sentence2", "similarity"],
              [[f"t{split}{i}", sentence(rng), sentence(rng), round(rng.uniform(0, 5), 2)] for i in range(n)])
    write("ids-sst-test-student.csv", ["", "id", "sentence"], [[f"stest{i}", sentence(rng)] for i in range(n)])
    return root


@pytest.fixture
def cs224n_dir(tmp_path) -> Path:
    return write_cs224n(tmp_path / "data")
