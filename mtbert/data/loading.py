"""From a task and a split name to tokenised examples, with skipped rows reported."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import datasets

from mtbert.data.encoding import tokenize_split
from mtbert.data.examples_cache import read_split_cached
from mtbert.data.reading import SplitData, read_split
from mtbert.errors import MtbertError
from mtbert.tasks import Task


def load_tokenizer(name_or_path: str):
    """A Hugging Face tokenizer from a folder or a hub name, or a readable error.

    The folder is data: one that asks for custom code is refused and none is ever run (trust_remote_code is
    off, so transformers neither imports it nor asks on standard input). A tokenizer without a vocabulary
    beyond its special tokens (a folder missing tokenizer.json and vocab.txt) would map every word to
    [UNK]: it is refused here, before it can train or predict anything."""
    from transformers import AutoTokenizer

    from mtbert.folders import looks_local, refuse_custom_code, require_folder

    if looks_local(name_or_path):
        require_folder(Path(name_or_path), "tokenizer folder")
        refuse_custom_code(Path(name_or_path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, HF hub errors...
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MtbertError(f"tokenizer {name_or_path!r}: could not be loaded from a folder or the hub: "
                          f"{first}") from None
    check_vocabulary(tokenizer, str(name_or_path))
    return tokenizer


def check_vocabulary(tokenizer, source: str) -> None:
    """Refuse a tokenizer that would turn ordinary words into [UNK]: one whose vocabulary holds nothing but
    its special tokens, or that does not even map words of its own vocabulary to themselves."""
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_tokens)
    unk = tokenizer.unk_token or "[UNK]"
    words = [token for token in vocab if token not in special]
    if not words:
        raise MtbertError(f"{source}: the tokenizer has no vocabulary besides its {len(special)} special tokens, "
                          f"so every word would be {unk} (are tokenizer.json and vocab.txt missing?)")
    # Plain lower-case words of its own vocabulary: any working tokenizer keeps some of them whole.
    sample = [w for w in sorted(words, key=vocab.__getitem__) if w.isascii() and w.isalpha() and w.islower()][:32]
    if sample and tokenizer.unk_token_id is not None:
        ids = tokenizer(" ".join(sample), add_special_tokens=False)["input_ids"]
        if ids and all(i == tokenizer.unk_token_id for i in ids):
            raise MtbertError(f"{source}: the tokenizer maps words of its own vocabulary ({', '.join(sample[:3])}, "
                              f"...) to {unk}; its files do not agree with each other")


def check_tokenizer_fits(tokenizer, embedding_rows: int, source: str) -> None:
    """Refuse a tokenizer with ids past the model's word embedding table (it belongs to another model):
    they would fail with an IndexError, or on some devices read garbage."""
    size = len(tokenizer)  # every id it can give, special and added tokens included, is below this
    if size > embedding_rows:
        raise MtbertError(f"{source}: the tokenizer has {size} ids but the model's word embedding has "
                          f"{embedding_rows} rows; the tokenizer does not belong to this model")


def load_split(task: Task, split: str, data_dir: str | Path, tokenizer, max_length: int, *,
               report: Callable[[str], None] = print, use_cache: bool = True, progress: bool = True,
               workers: int = 1) -> tuple[SplitData, datasets.Dataset]:
    """Read (from the examples cache), report skipped rows, tokenise (cached; `workers` processes the first
    time). Both results are memory-mapped from the cache when it is used."""
    if use_cache:
        data = read_split_cached(task, split, data_dir, progress=progress)
    else:
        data = read_split(task, split, data_dir)
    message = data.skip_report()
    if message:
        report(message)
    return data, tokenize_split(data, task, tokenizer, max_length, use_cache=use_cache, progress=progress,
                                workers=workers)


def require_labels(data: SplitData, task: Task, split: str) -> None:
    if not data.labelled:
        raise MtbertError(f"{data.source}: the {split} split of task {task.name} has no labels to score against")
