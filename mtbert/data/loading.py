"""From a task and a split name to tokenised examples, with skipped rows reported."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import datasets

from mtbert.data.encoding import tokenize_split
from mtbert.data.reading import SplitData, read_split
from mtbert.errors import MtbertError
from mtbert.tasks import Task


def load_tokenizer(name_or_path: str):
    """A Hugging Face tokenizer from a folder or a hub name, or a readable error."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, HF hub errors...
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MtbertError(f"tokenizer {name_or_path!r}: could not be loaded from a folder or the hub: "
                          f"{first}") from None


def load_split(task: Task, split: str, data_dir: str | Path, tokenizer, max_length: int, *,
               report: Callable[[str], None] = print, use_cache: bool = True,
               progress: bool = True) -> tuple[SplitData, datasets.Dataset]:
    """Read, report skipped rows, tokenise (cached)."""
    data = read_split(task, split, data_dir)
    message = data.skip_report()
    if message:
        report(message)
    return data, tokenize_split(data, task, tokenizer, max_length, use_cache=use_cache, progress=progress)


def require_labels(data: SplitData, task: Task, split: str) -> None:
    if not data.labelled:
        raise MtbertError(f"{data.source}: the {split} split of task {task.name} has no labels to score against")
