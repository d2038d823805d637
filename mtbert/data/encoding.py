"""Tokenise a split once, through `datasets.map`, and cache the result on disk.

The cache key covers everything the token ids depend on: the source file (path, size, modification
time) or hub fingerprint, the tokenizer's full definition, the maximum length, the pair encoding and,
for a prompted task, the template's text. A changed file, tokenizer or template therefore never reuses
stale ids.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import datasets

from mtbert.data.prompts import render
from mtbert.data.reading import SplitData
from mtbert.tasks import Task

CACHE_VERSION = 1


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


def tokenize_split(split: SplitData, task: Task, tokenizer, max_length: int, *, use_cache: bool = True,
                   progress: bool = True) -> datasets.Dataset:
    """Add input_ids/token_type_ids (and *_b for siamese pairs) to the split's examples."""
    mode = encoding_mode(task)
    parts = [CACHE_VERSION, split.fingerprint, tokenizer_fingerprint(tokenizer), max_length, mode]
    if mode == "prompt":  # the template's text is part of the token ids
        parts += [task.prompt.question, task.prompt.context]
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]
    cache_file = None
    if use_cache:
        folder = cache_dir() / "tokenized"
        folder.mkdir(parents=True, exist_ok=True)
        cache_file = str(folder / f"{task.name}-{key}.arrow")

    def encode(batch: dict[str, list]) -> dict[str, list]:
        if mode == "prompt":
            texts_b = batch["text_b"] if "text_b" in batch else [""] * len(batch["text_a"])
            rendered = [render(task.prompt, a, b) for a, b in zip(batch["text_a"], texts_b)]
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

    bars_were_on = datasets.is_progress_bar_enabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        return split.dataset.map(encode, batched=True, batch_size=1000, cache_file_name=cache_file,
                                 load_from_cache_file=use_cache, desc=f"tokenize {task.name}",
                                 new_fingerprint=key if use_cache else None)
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
