from collections import Counter

import datasets
import torch

from mtbert.data.streams import TaskStream


def dataset(n=50, labels=None):
    labels = labels if labels is not None else [i % 2 for i in range(n)]
    return datasets.Dataset.from_dict({"input_ids": [[2, 10 + i, 3] for i in range(n)],
                                       "token_type_ids": [[0, 0, 0]] * n, "label": labels})


def ids(batch):
    return batch["input_ids"][:, 1].tolist()


def stream(**kw):
    kw.setdefault("seed", 0)
    kw.setdefault("stream_id", 0)
    return TaskStream(dataset(kw.pop("n", 50), kw.pop("labels", None)), kw.pop("batch_size", 8), pad_id=0, **kw)


def test_one_pass_visits_every_example_once_then_reshuffles():
    s = stream()
    first = [i for _ in range(s.batches_per_pass) for i in ids(s.next_batch())]
    assert sorted(first) == list(range(10, 60))
    second = [i for _ in range(s.batches_per_pass) for i in ids(s.next_batch())]
    assert sorted(second) == sorted(first) and second != first
    assert s.state.passes == 1


def test_two_processes_split_the_single_process_batch():
    single = stream(batch_size=8)
    ranks = [stream(batch_size=4, num_processes=2, process_index=r) for r in range(2)]
    for _ in range(10):
        whole = ids(single.next_batch())
        parts = [ids(r.next_batch()) for r in ranks]
        assert sorted(parts[0] + parts[1]) == sorted(whole)
        assert not set(parts[0]) & set(parts[1])


def test_cap_limits_a_pass_to_a_fresh_subset():
    s = stream(max_examples=16)
    assert s.pass_size == 16 and s.batches_per_pass == 2
    a = ids(s.next_batch()) + ids(s.next_batch())
    b = ids(s.next_batch()) + ids(s.next_batch())
    assert len(set(a)) == 16 and set(a) != set(b)


def test_class_balanced_draws_rare_labels_as_often():
    labels = [1 if i < 5 else 0 for i in range(100)]
    s = stream(n=100, labels=labels, class_balanced=True, batch_size=50)
    counts = Counter()
    for _ in range(40):
        counts.update(s.next_batch()["labels"].tolist())
    assert abs(counts[1] / (counts[0] + counts[1]) - 0.5) < 0.05


def test_resume_from_state_continues_identically():
    a = stream()
    for _ in range(9):
        a.next_batch()
    b = stream()
    b.load_state_dict(a.state_dict())
    for _ in range(12):
        assert torch.equal(a.next_batch()["input_ids"], b.next_batch()["input_ids"])


def test_order_depends_on_seed_and_stream():
    assert ids(stream(seed=0).next_batch()) != ids(stream(seed=1).next_batch())
    assert ids(stream(stream_id=0).next_batch()) != ids(stream(stream_id=1).next_batch())
