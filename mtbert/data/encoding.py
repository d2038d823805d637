"""Tokenise a split once, through `datasets.map`, and cache the result on disk.

The cached dataset holds the examples as read (ids, texts, labels) and their token ids, so its key must
cover everything either depends on. Rather than list the recipe fields that decide the reading (file,
format, columns, label column and names, kind, ...: a list a new field could be missing from), the key
hashes what was read: every example and the column types (`examples_fingerprint`). Whatever setting
changes what is read therefore changes the key, and settings that change nothing read share an entry.
The rest of the key is what the encoder does with the examples: the tokenizer's full definition, the
maximum length and `encoding_spec(task)`, the only view of the task the encoder is given.

An entry holds the token columns only, as Arrow files that are memory-mapped when loaded; the loaded
dataset puts them beside the examples' own (memory-mapped) columns, so no process holds either in memory
and no text is stored twice. The first tokenisation of a split may run in several worker processes
(`data.workers`, datasets' `map(num_proc=...)`): the entry lists its files, so it loads the same however
many workers wrote it.

    <cache>/tokenized/<task>-<key>/    part*.arrow (one per worker), parts.json (written last)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import datasets

from mtbert.data.prompts import PromptTemplate, render
from mtbert.data.reading import SplitData
from mtbert.errors import MtbertError
from mtbert.tasks import Task

CACHE_VERSION = 3  # 2: keyed on the examples read, not on the file's path, size and time; 3: hashed in chunks
FINGERPRINT_CHUNK = 10_000
"Examples hashed at a time: the fingerprint of a million examples never holds them all as Python objects."
PARTS = "parts.json"
TOKEN_COLUMNS = ("input_ids", "token_type_ids", "input_ids_b", "token_type_ids_b")


def cache_dir() -> Path:
    """MTBERT_CACHE, else ~/.cache/mtbert."""
    return Path(os.environ.get("MTBERT_CACHE") or Path.home() / ".cache" / "mtbert")


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's definition; computed once per tokenizer object (a large vocabulary takes a
    noticeable moment to serialise, and a run of many tasks asks for it per split)."""
    known = getattr(tokenizer, "_mtbert_fingerprint", None)
    if known is None:
        known = _tokenizer_definition_hash(tokenizer)
        with contextlib.suppress(AttributeError):
            tokenizer._mtbert_fingerprint = known
    return known


def _tokenizer_definition_hash(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        definition = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    else:
        # Calling the tokenizer switches truncation/padding on inside its backend; they are per-call
        # settings, not part of what the tokenizer is, so they must not change the key.
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        definition = json.dumps(spec, sort_keys=True)
    return hashlib.sha256(definition.encode("utf-8")).hexdigest()[:16]


def encoding_mode(task: Task) -> str:
    """single: one sentence; cross: [CLS] a [SEP] b [SEP]; siamese: a and b encoded apart;
    prompt: [CLS] question [SEP] context [SEP], rendered from the task's template."""
    if task.prompt is not None:
        return "prompt"
    if not task.is_pair:
        return "single"
    return task.pair_encoding


def encoding_spec(task: Task) -> dict:
    """Everything of the task that decides its token ids, given its examples: the encoder sees only this."""
    mode = encoding_mode(task)
    spec: dict = {"mode": mode}
    if mode == "prompt":  # the template's text is part of the token ids
        spec["prompt"] = dataclasses.asdict(task.prompt)
    return spec


def examples_fingerprint(dataset: datasets.Dataset) -> str:
    """A hash of every example of the dataset (in order, after any selection) and of its column types."""
    digest = hashlib.sha256(json.dumps(dataset.features.to_dict(), sort_keys=True).encode())
    table = dataset.with_format("arrow")[:]  # applies an index mapping left by select or shuffle
    for name in sorted(table.column_names):
        digest.update(json.dumps(name).encode())
        column = table.column(name)
        for start in range(0, len(column), FINGERPRINT_CHUNK):
            digest.update(json.dumps(column.slice(start, FINGERPRINT_CHUNK).to_pylist(), ensure_ascii=False).encode())
    return digest.hexdigest()


def cache_key(split: SplitData, task: Task, tokenizer, max_length: int) -> str:
    """The tokenisation cache's key: what was read, and how the encoder turns it into token ids."""
    examples = split.fingerprint or examples_fingerprint(split.dataset)
    parts = [CACHE_VERSION, examples, tokenizer_fingerprint(tokenizer), max_length, encoding_spec(task)]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


# Below this many examples a split is read and tokenised in well under a second: a bar per split and per
# cache write would only bury the run's own summary lines (and an error after them).
PROGRESS_MIN_EXAMPLES = 10_000


@contextlib.contextmanager
def progress_bars(enabled: bool, examples: int) -> Iterator[None]:
    """datasets' progress bars on or off for a while (off for small splits), as they were afterwards."""
    were_on = datasets.is_progress_bar_enabled()
    if not enabled or examples < PROGRESS_MIN_EXAMPLES:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if were_on:
            datasets.enable_progress_bars()


def tokenize_split(split: SplitData, task: Task, tokenizer, max_length: int, *, use_cache: bool = True,
                   progress: bool = True, workers: int = 1) -> datasets.Dataset:
    """The split's examples with input_ids/token_type_ids (and *_b for siamese pairs) beside them; `workers`
    processes tokenise a split that is not cached yet."""
    encode = encoder(task, tokenizer, max_length)
    token_columns = _token_columns(split.dataset, encode)
    with progress_bars(progress, len(split.dataset)):
        if not use_cache:
            return split.dataset.map(encode, batched=True, batch_size=1000, desc=f"tokenize {task.name}")
        folder = cache_dir() / "tokenized" / f"{task.name}-{cache_key(split, task, tokenizer, max_length)}"
        tokens = _load_tokens(folder)
        if tokens is None:
            _store_tokens(folder, split.dataset, encode, token_columns, workers, task.name)
            tokens = _load_tokens(folder)
    return datasets.concatenate_datasets([split.dataset, tokens], axis=1)


def _token_columns(dataset: datasets.Dataset, encode: Callable) -> list[str]:
    return list(encode(dataset[:1]))


def _load_tokens(folder: Path) -> datasets.Dataset | None:
    try:
        parts = json.loads((folder / PARTS).read_text(encoding="utf-8"))["files"]
        shards = [datasets.Dataset.from_file(str(folder / name)) for name in parts]
    except (OSError, ValueError, KeyError):
        return None
    return shards[0] if len(shards) == 1 else datasets.concatenate_datasets(shards)


def _store_tokens(folder: Path, dataset: datasets.Dataset, encode: Callable, token_columns: list[str], workers: int,
                  name: str) -> None:
    """Tokenise into a staged entry whose file list is written last."""
    with staged_entry(folder, "tokenisation cache") as staging:
        drop = [c for c in dataset.column_names if c not in token_columns]
        procs = max(1, min(workers, len(dataset) // 1000))  # a worker per thousand examples at least
        dataset.map(encode, batched=True, batch_size=1000, num_proc=procs if procs > 1 else None,
                    remove_columns=drop, cache_file_name=str(staging / "part.arrow"),
                    new_fingerprint=folder.name, desc=f"tokenize {name}")
        files = sorted(p.name for p in staging.glob("part*.arrow"))
        (staging / PARTS).write_text(json.dumps({"files": files}) + "\n", encoding="utf-8")


@contextlib.contextmanager
def staged_entry(folder: Path, what: str) -> Iterator[Path]:
    """A staging folder beside the cache entry `folder`, renamed into place once filled: a reader sees all of
    an entry or nothing, and of two processes storing the same entry at once, one rename wins and the other's
    copy goes."""
    staging = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir(parents=True)
        yield staging
        with contextlib.suppress(OSError):  # another process stored it first: keep theirs
            os.rename(staging, folder)
    except OSError as error:
        raise MtbertError(f"{folder.parent}: cannot write the {what} ({error.strerror or error}); set MTBERT_CACHE "
                          f"to a writable folder") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def encoder(task: Task, tokenizer, max_length: int) -> Callable[[dict[str, list]], dict[str, list]]:
    """The task's batch encoder (columns text_a, text_b -> token columns), as tokenize_split applies it."""
    return _encoder(encoding_spec(task), tokenizer, max_length)


def _encoder(spec: dict, tokenizer, max_length: int) -> Callable[[dict[str, list]], dict[str, list]]:
    """The batch function for `datasets.map`, built from the spec alone so that nothing outside the cache
    key can change the token ids."""
    mode = spec["mode"]
    prompt = PromptTemplate(**spec["prompt"]) if mode == "prompt" else None

    def encode(batch: dict[str, list]) -> dict[str, list]:
        if mode == "prompt":
            texts_b = batch["text_b"] if "text_b" in batch else [""] * len(batch["text_a"])
            rendered = [render(prompt, a, b) for a, b in zip(batch["text_a"], texts_b)]
            enc = tokenizer([q for q, _ in rendered], [c for _, c in rendered], truncation=True,
                            max_length=max_length, return_token_type_ids=True, return_attention_mask=False)
            return {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]}
        if mode == "cross":
            enc = tokenizer(batch["text_a"], batch["text_b"], truncation=True, max_length=max_length,
                            return_token_type_ids=True, return_attention_mask=False)
            return {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]}
        out = {}
        a = tokenizer(batch["text_a"], truncation=True, max_length=max_length, return_token_type_ids=True,
                      return_attention_mask=False)
        out["input_ids"], out["token_type_ids"] = a["input_ids"], a["token_type_ids"]
        if mode == "siamese":
            b = tokenizer(batch["text_b"], truncation=True, max_length=max_length, return_token_type_ids=True,
                          return_attention_mask=False)
            out["input_ids_b"], out["token_type_ids_b"] = b["input_ids"], b["token_type_ids"]
        return out

    return encode
