"""Tokenise a split once, through `datasets.map`, and cache the result on disk.

The cached dataset holds the examples as read (ids, texts, labels) and their token ids, so its key must
cover everything either depends on. Rather than list the recipe fields that decide the reading (file,
format, columns, label column and names, kind, ...: a list a new field could be missing from), the key
hashes what was read: every example and the column types (`examples_fingerprint`). Whatever setting
changes what is read therefore changes the key, and settings that change nothing read share an entry.
The rest of the key is what the encoder does with the examples: the tokenizer's full definition, the
maximum length and `encoding_spec(task)`, the only view of the task the encoder is given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import datasets

from mtbert.data.prompts import PromptTemplate, render
from mtbert.data.reading import SplitData
from mtbert.tasks import Task

CACHE_VERSION = 2  # 2: keyed on the examples read, not on the file's path, size and time


def cache_dir() -> Path:
    """MTBERT_CACHE, else ~/.cache/mtbert."""
    return Path(os.environ.get("MTBERT_CACHE") or Path.home() / ".cache" / "mtbert")


def tokenizer_fingerprint(tokenizer) -> str:
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
        digest.update(json.dumps([name, table.column(name).to_pylist()], ensure_ascii=False).encode())
    return digest.hexdigest()


def cache_key(split: SplitData, task: Task, tokenizer, max_length: int) -> str:
    """The tokenisation cache's key: what was read, and how the encoder turns it into token ids."""
    parts = [CACHE_VERSION, examples_fingerprint(split.dataset), tokenizer_fingerprint(tokenizer), max_length,
             encoding_spec(task)]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def tokenize_split(split: SplitData, task: Task, tokenizer, max_length: int, *, use_cache: bool = True,
                   progress: bool = True) -> datasets.Dataset:
    """Add input_ids/token_type_ids (and *_b for siamese pairs) to the split's examples."""
    key = cache_key(split, task, tokenizer, max_length) if use_cache else None
    cache_file = None
    if use_cache:
        folder = cache_dir() / "tokenized"
        folder.mkdir(parents=True, exist_ok=True)
        cache_file = str(folder / f"{task.name}-{key}.arrow")
    encode = _encoder(encoding_spec(task), tokenizer, max_length)
    bars_were_on = datasets.is_progress_bar_enabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        return split.dataset.map(encode, batched=True, batch_size=1000, cache_file_name=cache_file,
                                 load_from_cache_file=use_cache, desc=f"tokenize {task.name}",
                                 new_fingerprint=key)
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


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
