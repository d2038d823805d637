import datasets
import numpy as np
import pytest
import torch

from mtbert.data.length_grouping import example_lengths, group_by_length, padding_efficiency
from mtbert.data.streams import TaskStream


def lengths(n=200, seed=0):
    return np.random.default_rng(seed).integers(3, 60, size=n)


def batches_of(order, size):
    return [order[i: i + size].tolist() for i in range(0, len(order), size)]


def test_is_a_permutation_with_batches_of_similar_length():
    lens = lengths()
    order = torch.randperm(200, generator=torch.Generator().manual_seed(0))
    grouped = group_by_length(order, lens, batch_size=8, pool_batches=25, generator=torch.Generator().manual_seed(1))
    assert sorted(grouped.tolist()) == list(range(200))
    before = padding_efficiency([[lens[i] for i in b] for b in batches_of(order, 8)])
    after = padding_efficiency([[lens[i] for i in b] for b in batches_of(grouped, 8)])
    assert before < 0.7 < 0.9 < after


def test_batches_come_in_random_order_and_depend_on_the_generator():
    lens = lengths()
    order = torch.arange(200)
    one = group_by_length(order, lens, 8, 25, torch.Generator().manual_seed(1))
    again = group_by_length(order, lens, 8, 25, torch.Generator().manual_seed(1))
    other = group_by_length(order, lens, 8, 25, torch.Generator().manual_seed(2))
    assert torch.equal(one, again) and not torch.equal(one, other)
    longest = [max(lens[i] for i in b) for b in batches_of(one, 8)]
    assert longest != sorted(longest, reverse=True) and longest != sorted(longest)


def test_pools_keep_examples_apart_and_partial_batch_stays_last():
    lens = lengths(n=100)
    order = torch.arange(100)
    grouped = group_by_length(order, lens, batch_size=8, pool_batches=5, generator=torch.Generator().manual_seed(0))
    # Pool 0 holds order[0:40]: each of its batches draws only from it.
    for batch in batches_of(grouped[:96], 8):
        pools = {i // 40 for i in batch}
        assert len(pools) == 1
    # 100 = 12 batches of 8 + 4: the last 4 are the shortest of the last pool (examples 80..99).
    tail = grouped[96:].tolist()
    assert set(tail) <= set(range(80, 100))
    assert max(lens[tail]) <= min(lens[i] for i in range(80, 100) if i not in tail)


def test_pool_of_zero_batches_is_refused():
    with pytest.raises(ValueError, match="pool_batches"):
        group_by_length(torch.arange(4), np.ones(4, dtype=int), 2, 0, torch.Generator())


def test_example_lengths_take_the_longer_side_of_a_pair():
    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2], [1, 2, 3, 4]], "input_ids_b": [[1, 2, 3], [1]]})
    assert example_lengths(ds).tolist() == [3, 4]


# --- the stream with length grouping ------------------------------------------------------


def varied(n=96):
    rng = np.random.default_rng(0)
    rows = [[2, *range(10 + i * 100, 10 + i * 100 + int(rng.integers(1, 40))), 3] for i in range(n)]
    return datasets.Dataset.from_dict({"input_ids": rows, "token_type_ids": [[0] * len(r) for r in rows],
                                       "label": [i % 2 for i in range(n)]})


def first_ids(batch):
    return [(row[1].item() - 10) // 100 for row in batch["input_ids"]]


def stream(**kw):
    return TaskStream(varied(kw.pop("n", 96)), kw.pop("batch_size", 8), seed=kw.pop("seed", 0), stream_id=0,
                      pad_id=0, **kw)


def test_grouped_stream_visits_every_example_once_per_pass_with_less_padding():
    plain, grouped = stream(), stream(length_pool=4)
    seen, padded = [], {"plain": 0, "grouped": 0}
    for _ in range(grouped.batches_per_pass):
        batch = grouped.next_batch()
        seen += first_ids(batch)
        padded["grouped"] += batch["input_ids"].numel()
        padded["plain"] += plain.next_batch()["input_ids"].numel()
    assert sorted(seen) == list(range(96))
    assert padded["grouped"] < 0.8 * padded["plain"]


def test_grouped_stream_resumes_identically():
    a = stream(length_pool=4)
    for _ in range(17):  # into the second pass
        a.next_batch()
    b = stream(length_pool=4)
    b.load_state_dict(a.state_dict())
    for _ in range(20):
        assert torch.equal(a.next_batch()["input_ids"], b.next_batch()["input_ids"])


def test_grouped_two_processes_split_the_single_process_batch():
    single = stream(batch_size=8, length_pool=4)
    ranks = [stream(batch_size=4, num_processes=2, process_index=r, length_pool=4) for r in range(2)]
    for _ in range(15):
        whole = first_ids(single.next_batch())
        parts = [first_ids(r.next_batch()) for r in ranks]
        assert sorted(parts[0] + parts[1]) == sorted(whole)


def test_grouping_off_keeps_the_plain_order():
    assert torch.equal(stream()._order_for(3), stream(length_pool=0)._order_for(3))
    assert not torch.equal(stream()._order_for(3), stream(length_pool=4)._order_for(3))
