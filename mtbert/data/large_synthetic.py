"""Large generated tasks, as many and as big as asked, so that start-up, memory and many-task training can be
measured anywhere (`mtbert make-data large --rows 1000000 --tasks 1 --out data/large`).

`make_large_data` writes `tasks` tasks into one folder, each a TSV file per split (`id, sentence[, sentence2],
label`), a word-level tokenizer and a recipe that trains all of them. The largest task has `rows` training
examples and the smallest `smallest` (default: the same), the sizes in between spaced evenly on a log scale,
so that a many-task recipe has the long tail of small tasks that sampling must keep alive.

The sentences are strings of made-up two-syllable words (`kobu dabe ...`). Tasks take turns among four kinds,
each with its own words that decide the label (drawn from the seed and the task's index), so every task is
learnable and different:

* polarity (binary): 1 when the sentence holds more of the task's positive words than of its negative ones;
* marker (3 classes): which of the task's three marker words the sentence holds (exactly one of them);
* overlap (regression 0-5, a pair): five times the share of word positions the two sentences agree on;
* reorder (binary, a pair): 1 when the second sentence is the first with its words shuffled, 0 when it
  has also had one word replaced.

Rows are generated in blocks with NumPy's generator, so a million rows take seconds, and the same seed
and sizes give the same bytes.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import yaml

from mtbert.data import synthetic
from mtbert.errors import MtbertError

GENERATOR = "mtbert.data.large_synthetic.make_large_data"
KINDS = ("polarity", "marker", "overlap", "reorder")
BLOCK = 50_000
"Rows generated (and written) at a time: the generator's memory does not grow with the rows asked for."
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
VOCABULARY = [c1 + v1 + c2 + v2 for c1 in _CONSONANTS for v1 in _VOWELS for c2 in _CONSONANTS for v2 in _VOWELS][:2000]
"The words every task's sentences are made of (whole words in the tokenizer: one token each)."
WORDS_PER_SENTENCE = (4, 16)


def task_sizes(rows: int, smallest: int, tasks: int) -> list[int]:
    """Training rows per task: `rows` for the first, `smallest` for the last, log-spaced in between."""
    if tasks == 1:
        return [rows]
    ratio = math.log(smallest / rows) / (tasks - 1)
    return [max(1, round(rows * math.exp(ratio * i))) for i in range(tasks)]


def task_name(index: int, tasks: int) -> str:
    return f"task{index:0{max(2, len(str(tasks - 1)))}d}"


class _TaskWords:
    """The words that decide one task's labels."""

    def __init__(self, rng: np.random.Generator):
        chosen = rng.choice(len(VOCABULARY), size=43, replace=False)
        self.positive, self.negative = chosen[:20], chosen[20:40]
        self.markers = chosen[40:43]


def _sentences(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, longest) word ids and each sentence's length."""
    low, high = WORDS_PER_SENTENCE
    lengths = rng.integers(low, high + 1, size=n)
    return rng.integers(0, len(VOCABULARY), size=(n, high)), lengths


def _text(ids: np.ndarray, length: int) -> str:
    return " ".join(VOCABULARY[i] for i in ids[:length])


def _polarity(rng, words: _TaskWords, n: int):
    ids, lengths = _sentences(rng, n)
    rows = np.arange(n)
    # Plant up to three of the task's positive and three of its negative words, so that both labels are common.
    for planted in (words.positive, words.negative):
        count = rng.integers(0, 4, size=n)
        for k in range(3):
            slot = (rng.random(n) * lengths).astype(int)
            chosen = rng.choice(planted, size=n)
            keep = k < count
            ids[rows[keep], slot[keep]] = chosen[keep]
    head = np.where(np.arange(ids.shape[1]) < lengths[:, None], ids, -1)
    labels = (np.isin(head, words.positive).sum(1) > np.isin(head, words.negative).sum(1)).astype(int)
    return [(_text(ids[r], lengths[r]), int(labels[r])) for r in range(n)]


def _marker(rng, words: _TaskWords, n: int):
    ids, lengths = _sentences(rng, n)
    labels = rng.integers(0, 3, size=n)
    ids[np.isin(ids, words.markers)] = words.positive[0]  # no stray marker: exactly one per sentence
    slots = (rng.random(n) * lengths).astype(int)
    ids[np.arange(n), slots] = words.markers[labels]
    return [(_text(ids[r], lengths[r]), int(labels[r])) for r in range(n)]


def _overlap(rng, words: _TaskWords, n: int):
    ids, lengths = _sentences(rng, n)
    keep = rng.random(n)
    second = np.where(rng.random(ids.shape) < keep[:, None], ids, rng.integers(0, len(VOCABULARY), size=ids.shape))
    positions = np.arange(ids.shape[1]) < lengths[:, None]
    agree = ((second == ids) & positions).sum(1) / lengths
    return [(_text(ids[r], lengths[r]), _text(second[r], lengths[r]), round(5.0 * float(agree[r]), 2))
            for r in range(n)]


def _reorder(rng, words: _TaskWords, n: int):
    ids, lengths = _sentences(rng, n)
    labels = rng.integers(0, 2, size=n)
    positions = np.arange(ids.shape[1]) < lengths[:, None]
    order = np.argsort(np.where(positions, rng.random(ids.shape), 2.0), axis=1)  # a shuffle of each sentence's words
    second = np.take_along_axis(ids, order, axis=1)
    changed = np.flatnonzero(labels == 0)
    slot = (rng.random(len(changed)) * lengths[changed]).astype(int)
    shift = 1 + rng.integers(0, len(VOCABULARY) - 1, size=len(changed))
    second[changed, slot] = (second[changed, slot] + shift) % len(VOCABULARY)
    return [(_text(ids[r], lengths[r]), _text(second[r], lengths[r]), int(labels[r])) for r in range(n)]


_MAKERS = {"polarity": _polarity, "marker": _marker, "overlap": _overlap, "reorder": _reorder}
_PAIR = {"overlap", "reorder"}


def task_spec(name: str, kind: str) -> dict:
    """The recipe's entry for a generated task."""
    spec = {"format": "tsv", "train_file": f"{name}/train.tsv", "dev_file": f"{name}/dev.tsv",
            "text_columns": ["sentence1", "sentence2"] if kind in _PAIR else ["sentence"],
            "label_column": "label", "id_column": "id"}
    if kind == "overlap":
        spec.update(kind="regression", label_range=[0, 5], metrics=["pearson", "spearman"])
    elif kind == "marker":
        spec.update(kind="classes", num_labels=3, metrics=["accuracy"])
    else:
        spec.update(kind="binary", metrics=["accuracy"])
    return spec


def _write_split(path: Path, kind: str, rng: np.random.Generator, words: _TaskWords, rows: int, prefix: str) -> None:
    header = ["id", "sentence1", "sentence2", "label"] if kind in _PAIR else ["id", "sentence", "label"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        out.write("\t".join(header) + "\n")
        for start in range(0, rows, BLOCK):
            block = _MAKERS[kind](rng, words, min(BLOCK, rows - start))
            out.write("".join("\t".join([f"{prefix}-{start + i}", *map(str, row)]) + "\n"
                              for i, row in enumerate(block)))


def large_recipe(out_dir: Path, names: list[str], kinds: list[str], sizes: list[int]) -> dict:
    """A recipe that trains every generated task: a small random encoder, temperature sampling with a floor,
    each task evaluated on at most 2,000 dev examples."""
    return {
        "name": out_dir.name, "seed": 0, "data_dir": str(out_dir), "output_dir": f"ckpt/{out_dir.name}",
        "model": {"init": "random", "tokenizer": str(out_dir / "tokenizer"), "max_length": 40,
                  "size": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 256}},
        "tasks": {name: task_spec(name, kind) for name, kind in zip(names, kinds)},
        "sampling": {"strategy": "temperature", "temperature": 2.0, "min_share": round(0.2 / len(names), 4)},
        "train": {"max_steps": 2000, "batch_size": 32, "lr": 1.0e-3, "warmup_ratio": 0.05, "log_every": 50,
                  "checkpoint_every": 500},
        "eval": {"every_steps": 500, "max_examples": 2000, "batch_size": 256},
        "data": {"workers": 1},
        "speed": {"length_pool": 0},
    }


def make_large_data(out_dir: Path, rows: int, tasks: int = 1, smallest: int | None = None, dev_rows: int = 2000,
                    seed: int = 0) -> dict:
    """Write `tasks` generated tasks, their tokenizer and recipe.yaml into `out_dir`; return the rows per task.

    Refuses a folder that is neither empty nor an earlier output of a make-data generator."""
    out_dir = Path(out_dir)
    smallest = rows if smallest is None else smallest
    for name, value in (("--rows", rows), ("--tasks", tasks), ("--smallest", smallest), ("--dev-rows", dev_rows)):
        if value < 1:
            raise MtbertError(f"{name} must be at least 1, got {value}")
    if smallest > rows:
        raise MtbertError(f"--smallest {smallest} is more than --rows {rows}")
    synthetic.check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    build = synthetic.sibling(out_dir, "tmp")
    build.mkdir()
    sizes = task_sizes(rows, smallest, tasks)
    names = [task_name(i, tasks) for i in range(tasks)]
    kinds = [KINDS[i % len(KINDS)] for i in range(tasks)]
    try:
        for index, (name, kind, size) in enumerate(zip(names, kinds, sizes)):
            rng = np.random.default_rng([seed, index])
            words = _TaskWords(rng)
            _write_split(build / name / "train.tsv", kind, rng, words, size, f"{name}-train")
            _write_split(build / name / "dev.tsv", kind, rng, words, min(dev_rows, size), f"{name}-dev")
        vocab = {token: i for i, token in enumerate([*synthetic.SPECIAL_TOKENS, *VOCABULARY])}
        synthetic.save_tokenizer(vocab, build / "tokenizer")
        recipe = large_recipe(out_dir, names, kinds, sizes)
        (build / "recipe.yaml").write_text(f"# mtbert train {out_dir / 'recipe.yaml'}\n"
                                           + yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
        summary = {name: {"kind": kind, "train": size, "dev": min(dev_rows, size)}
                   for name, kind, size in zip(names, kinds, sizes)}
        marker = {"generator": GENERATOR, "seed": seed, "summary": summary}
        (build / synthetic.MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        synthetic.move_into_place(build, out_dir)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return summary
