"""Pad a list of tokenised examples into one batch, to the longest example in it (dynamic padding)."""

from __future__ import annotations

import torch


def pad(sequences: list[list[int]], value: int) -> torch.Tensor:
    longest = max(len(s) for s in sequences)
    out = torch.full((len(sequences), longest), value, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def attention_mask(sequences: list[list[int]]) -> torch.Tensor:
    longest = max(len(s) for s in sequences)
    lengths = torch.tensor([len(s) for s in sequences])
    return (torch.arange(longest)[None, :] < lengths[:, None]).long()


def collate(rows: dict[str, list], pad_id: int) -> dict[str, torch.Tensor]:
    """Columns of a `datasets` slice -> tensors; `labels` when the rows carry a label."""
    batch = {}
    for suffix in ("", "_b"):
        ids = rows.get(f"input_ids{suffix}")
        if ids is None:
            continue
        batch[f"input_ids{suffix}"] = pad(ids, pad_id)
        batch[f"attention_mask{suffix}"] = attention_mask(ids)
        batch[f"token_type_ids{suffix}"] = pad(rows[f"token_type_ids{suffix}"], 0)
    if "label" in rows:
        labels = rows["label"]
        dtype = torch.float32 if labels and isinstance(labels[0], float) else torch.long
        batch["labels"] = torch.tensor(labels, dtype=dtype)
    return batch
