from types import SimpleNamespace

import datasets
import numpy as np
import torch

from mtbert.inference import eval_loader, run_inference, token_budget_batches
from mtbert.model.bert import BertConfig
from mtbert.model.multitask import MultiTaskConfig, MultiTaskModel, TaskHeadSpec


def test_token_budget_batches_by_hand():
    lengths = np.array([10, 8, 5, 5, 4, 2, 2, 1])  # sorted longest first
    # Budget 20: [10, 8] (2 x 10), [5, 5, 4, 2] (4 x 5), [2, 1] (the rest).
    assert token_budget_batches(lengths, batch_size=100, max_tokens=20) == [[0, 1], [2, 3, 4, 5], [6, 7]]
    # The row cap still holds, and an example longer than the budget goes alone.
    assert token_budget_batches(lengths, batch_size=3, max_tokens=20) == [[0, 1], [2, 3, 4], [5, 6, 7]]
    assert token_budget_batches(np.array([30, 3]), batch_size=8, max_tokens=20) == [[0], [1]]
    # A siamese pair is two sequences: half as many examples fit.
    assert token_budget_batches(lengths, batch_size=100, max_tokens=20, sequences_per_example=2) == \
        [[0], [1], [2, 3], [4, 5], [6, 7]]


def rows(n=37, pair=False, seed=0):
    rng = np.random.default_rng(seed)
    data = {"input_ids": [], "token_type_ids": [], "label": []}
    if pair:
        data |= {"input_ids_b": [], "token_type_ids_b": []}
    for i in range(n):
        for suffix in ("", "_b") if pair else ("",):
            ids = [2, *rng.integers(5, 50, size=int(rng.integers(1, 20))).tolist(), 3]
            data[f"input_ids{suffix}"].append(ids)
            data[f"token_type_ids{suffix}"].append([0] * len(ids))
        data["label"].append(i % 3)
    return datasets.Dataset.from_dict(data)


def model(encoding):
    torch.manual_seed(0)
    encoder = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32)
    return MultiTaskModel(MultiTaskConfig(encoder, {"t": TaskHeadSpec(kind="classes", num_outputs=3,
                                                                      encoding=encoding)})).eval()


def task():
    # run_inference reads only the name and the kind.
    return SimpleNamespace(name="t", kind="classes")


def test_token_budget_covers_every_example_within_budget():
    dataset = rows()
    loader = eval_loader(dataset, batch_size=64, pad_id=0, max_tokens=60)
    seen = []
    for batch in loader:
        seen += batch["index"].tolist()
        assert batch["input_ids"].numel() <= 60 or len(batch["index"]) == 1
    assert sorted(seen) == list(range(len(dataset)))


def test_token_budget_and_unpadding_give_the_same_predictions_in_the_original_order():
    for encoding, pair in (("single", False), ("siamese", True)):
        dataset = rows(pair=pair)
        m = model(encoding)
        fixed = run_inference(m, task(), eval_loader(dataset, batch_size=8, pad_id=0))
        m.encoder.unpad = True
        budget = run_inference(m, task(), eval_loader(dataset, batch_size=64, pad_id=0, max_tokens=100))
        assert np.array_equal(fixed.labels, np.array(dataset["label"]))  # original order restored
        assert np.array_equal(budget.labels, fixed.labels)
        np.testing.assert_allclose(budget.probabilities, fixed.probabilities, atol=1e-6)
        assert np.array_equal(budget.predictions, fixed.predictions)
