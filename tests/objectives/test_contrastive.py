"""Contrastive losses against their definitions, the anchor/positive/negative sets, the triplet stream."""

import math
from types import SimpleNamespace

import datasets
import pytest
import torch
import torch.nn.functional as F

from mtbert.config import StageConfig
from mtbert.data.triplets import TaskSentences, TripletError, TripletStream, build_triplets
from mtbert.objectives.base import TrainingModel
from mtbert.objectives.contrastive import (
    Contrastive,
    contrastive_loss,
    lse_hinge_loss,
    lse_smooth_loss,
    multiple_negatives_ranking_loss,
    triplet_loss,
)

from helpers import objective_context


def vectors(n: int = 4, width: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def test_ranking_loss_is_cross_entropy_over_the_in_batch_similarity_matrix():
    a, p, n = vectors(seed=0), vectors(seed=1), vectors(seed=2)
    similarity = torch.tensor([[F.cosine_similarity(a[i], c, dim=0).item() for c in torch.cat([p, n])]
                               for i in range(4)])  # (4, 8): every positive, then every negative
    expected = F.cross_entropy(20.0 * similarity, torch.arange(4))
    torch.testing.assert_close(multiple_negatives_ranking_loss(a, p, n, scale=20.0), expected)
    # Without explicit negatives the other anchors' positives are the only negatives.
    torch.testing.assert_close(multiple_negatives_ranking_loss(a, p, scale=5.0),
                               F.cross_entropy(5.0 * similarity[:, :4], torch.arange(4)))


def test_triplet_loss_is_the_euclidean_margin_hinge():
    a, p, n = vectors(seed=0), vectors(seed=1), vectors(seed=2)
    expected = sum(max(0.0, (a[i] - p[i]).norm().item() - (a[i] - n[i]).norm().item() + 1.5) for i in range(4)) / 4
    assert triplet_loss(a, p, n, margin=1.5).item() == pytest.approx(expected, rel=1e-6)
    assert triplet_loss(a, a, a + 100.0, margin=1.0).item() == 0.0  # far negatives, perfect positives


def test_lse_hinge_loss_follows_its_formula():
    a, p, n = vectors(seed=0), vectors(seed=1), vectors(seed=2)
    expected = 0.0
    for i in range(4):
        lse = torch.logsumexp(torch.stack([(a[i] - n[j]).norm() for j in range(4)]), 0)
        expected += max(0.0, (a[i] - p[i]).norm().item() - lse.item())
    assert lse_hinge_loss(a, p, n).item() == pytest.approx(expected / 4, rel=1e-6, abs=1e-7)
    assert lse_hinge_loss(a, a + 10.0, a).item() > 0  # positives farther than every negative


def test_lse_smooth_loss_by_hand():
    a = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    n = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
    # Anchor 0: d(a, p) = 1, d(a, n) = 2 and 3. Anchor 1: d(a, p) = 1, d(a, n) = sqrt(5) and 2.
    first = math.log(1 + math.exp(1 - 2) + math.exp(1 - 3))
    second = math.log(1 + math.exp(1 - math.sqrt(5)) + math.exp(1 - 2))
    assert lse_smooth_loss(a, p, n).item() == pytest.approx((first + second) / 2, rel=1e-6)
    # A far positive, negatives at 0 and 1: log(1 + e^(d+0) + e^(d-1)) with d = 100 sqrt(2), without overflow.
    far = 100 * math.sqrt(2) + math.log(1 + math.exp(-1))
    assert lse_smooth_loss(a, a + 100.0, a).item() == pytest.approx(far, rel=1e-6)
    # Perfect positives, far negatives: small, yet not zero (lse_hinge is 0 here).
    assert 0 < lse_smooth_loss(a, a, a + 10.0).item() < 1e-5 and lse_hinge_loss(a, a, a + 10.0).item() == 0


def real_looking(seed: int = 0, batch: int = 16, width: int = 64) -> tuple[torch.Tensor, ...]:
    """Unit-ish sentence vectors: each positive near its anchor, negatives anywhere (so farther)."""
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(batch, width, generator=g), dim=-1)
    p = F.normalize(a + 0.5 * torch.randn(batch, width, generator=g) / math.sqrt(width), dim=-1)
    n = F.normalize(torch.randn(batch, width, generator=g), dim=-1)
    return tuple(x.requires_grad_() for x in (a, p, n))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_on_real_looking_vectors_only_the_smooth_form_has_a_gradient(seed):
    a, p, n = real_looking(seed)
    assert ((a - p).norm(dim=-1)[:, None] < torch.cdist(a, n)).all()  # every positive closer than every negative
    hinge = lse_hinge_loss(a, p, n)
    hinge.backward()
    assert hinge.item() == 0.0 and all(x.grad is None or not x.grad.any() for x in (a, p, n))  # trains nothing
    for x in (a, p, n):
        x.grad = None
    smooth = lse_smooth_loss(a, p, n)
    smooth.backward()
    assert smooth.item() > 0.0 and all(x.grad.norm() > 1e-3 for x in (a, p, n))
    # Its gradient pulls each positive toward its anchor: a small step along it lowers the loss.
    with torch.no_grad():
        assert lse_smooth_loss(a, p - 0.1 * p.grad, n) < smooth


def test_contrastive_loss_reads_anchors_positives_negatives_in_thirds():
    a, p, n = vectors(seed=0), vectors(seed=1), vectors(seed=2)
    stacked = torch.cat([a, p, n])
    assert contrastive_loss("triplet", stacked, margin=2.0) == triplet_loss(a, p, n, 2.0)
    assert contrastive_loss("ranking", stacked, scale=7.0) == multiple_negatives_ranking_loss(a, p, n, 7.0)
    assert contrastive_loss("lse_hinge", stacked) == lse_hinge_loss(a, p, n)
    assert contrastive_loss("lse_smooth", stacked) == lse_smooth_loss(a, p, n)
    with pytest.raises(ValueError, match="unknown contrastive objective"):
        contrastive_loss("cosine", stacked)


SST = TaskSentences("sst", "classes", [f"s{i}" for i in range(30)], None, [i % 3 for i in range(30)])
STS = TaskSentences("sts", "regression", ["a0", "a1", "a2", "a3", "a4"], ["b0", "b1", "b2", "b3", "b4"],
                    [4.5, 3.0, 2.5, 1.0, 0.0])
QUORA = TaskSentences("quora", "binary", ["q0", "q1", "q0", "q3"], ["d0", "d1", "n0", "n3"], [1, 1, 0, 0])


def test_sst_positives_share_the_anchors_label_and_negatives_do_not():
    triplets = build_triplets(SST, [], seed=0)
    label = {s: y for s, y in zip(SST.text_a, SST.labels)}
    assert len(triplets) == 30
    for anchor, positive, negative in triplets:
        assert positive != anchor and label[positive] == label[anchor] and label[negative] != label[anchor]


def test_sts_pairs_split_by_score_range():
    triplets = build_triplets(STS, [], seed=0, positive_min=3.0, negative_max=2.0)
    # Pairs scored 3-5 are anchor and positive; 2.5 is in neither range; negatives come from pairs scored 0-2.
    assert [(a, p) for a, p, _ in triplets] == [("a0", "b0"), ("a1", "b1")]
    assert all(n in {"b3", "b4"} for _, _, n in triplets)


def test_quora_duplicates_are_positives_and_non_duplicates_hard_negatives():
    triplets = build_triplets(QUORA, [], seed=0)
    assert triplets[0] == ("q0", "d0", "n0")  # q0's own non-duplicate: a hard negative
    assert triplets[1][:2] == ("q1", "d1") and triplets[1][2] in {"n0", "n3", "q0", "q3"}


def test_negatives_can_come_from_other_tasks():
    others = ["other0", "other1"]
    assert all(n in others for _, _, n in build_triplets(STS, others, seed=0, other_task_negatives=1.0))
    mixed = build_triplets(SST, others, seed=0, other_task_negatives=0.5)
    assert 0 < sum(n in others for _, _, n in mixed) < 30
    assert build_triplets(SST, others, seed=3) == build_triplets(SST, others, seed=3)  # seeded


def test_tasks_that_give_no_triplets_are_named():
    with pytest.raises(TripletError, match="task one: .*two labels"):
        build_triplets(TaskSentences("one", "classes", ["x", "y"], None, [1, 1]), [], seed=0)
    with pytest.raises(TripletError, match="task nli: .*not a classes pair task"):
        build_triplets(TaskSentences("nli", "classes", ["x"], ["y"], [2]), [], seed=0)


def test_triplet_stream_gives_anchors_positives_negatives_and_resumes():
    data = datasets.Dataset.from_dict({"input_ids": [[2, 5, 3], [2, 6, 7, 3], [2, 8, 3], [2, 9, 3]],
                                       "positive_ids": [[2, 10, 3], [2, 11, 3], [2, 12, 13, 14, 3], [2, 15, 3]],
                                       "negative_ids": [[2, 16, 3], [2, 17, 3], [2, 18, 3], [2, 19, 3]]})
    stream = TripletStream(data, 2, seed=0, stream_id=0, pad_id=0)
    first = stream.next_batch()
    assert first["input_ids"].shape[0] == 6 and first["attention_mask"].shape == first["input_ids"].shape
    anchors, positives, negatives = first["input_ids"].chunk(3)
    rows = {tuple(r) for r in data["input_ids"]}
    assert all(tuple(x for x in row.tolist() if x) in rows for row in anchors)
    assert all(5 < row[1] < 16 and row[1] >= 10 for row in positives) and all(row[1] >= 16 for row in negatives)
    saved = stream.state_dict()
    second = stream.next_batch()
    again = TripletStream(data, 2, seed=0, stream_id=0, pad_id=0)
    again.load_state_dict(saved)
    assert all(torch.equal(second[k], v) for k, v in again.next_batch().items())


def test_two_processes_split_each_triplet_batch_exactly():
    data = datasets.Dataset.from_dict({"input_ids": [[2, 5 + i, 3] for i in range(8)],
                                       "positive_ids": [[2, 20 + i, 3] for i in range(8)],
                                       "negative_ids": [[2, 40 + i, 3] for i in range(8)]})
    whole = TripletStream(data, 4, seed=0, stream_id=0, pad_id=0).next_batch()["input_ids"]
    parts = [TripletStream(data, 2, seed=0, stream_id=0, pad_id=0, num_processes=2, process_index=i).next_batch()
             for i in (0, 1)]
    for third in range(3):  # anchors, positives, negatives: the two halves of each are the whole's
        mine = [p["input_ids"].chunk(3)[third][:, 1].tolist() for p in parts]
        assert sorted(mine[0] + mine[1]) == sorted(whole.chunk(3)[third][:, 1].tolist())
        assert not set(mine[0]) & set(mine[1])


# ---------------------------------------------------------------------------------------------
# The objective, through the interface


class VectorModel:
    """A fake model that pools each row of a batch to a fixed vector of its first token ids."""

    def __init__(self):
        self.calls = []

    def __call__(self, task, batch, **kwargs):
        self.calls.append((task, kwargs))
        return batch["input_ids"][:, :4].float()  # (3B, 4)


def test_contrastive_draws_triplets_and_takes_the_stage_s_loss(tmp_path, tokenizer_dir):
    context = objective_context(tmp_path, tokenizer_dir, ["tasks.sts.loss_weight=2.0"])
    stages = {0: StageConfig(tasks=["sst", "sts"], objective="triplet"), 2: StageConfig(objective="lse_smooth")}
    objective = Contrastive(context, stages)
    assert list(objective.streams) == ["sst", "sts", "quora"]  # every task of its stages, in the order they come
    assert list(objective.state_parts()) == ["triplet_streams"]
    batch = objective.streams["sts"].next_batch()
    assert batch["input_ids"].shape[0] == 3 * context.tasks["sts"].batch_size  # anchors, positives, negatives
    fake = VectorModel()
    for index, name, loss in ((0, "triplet", triplet_loss), (2, "lse_smooth", lse_smooth_loss)):
        out = objective.loss(TrainingModel(fake, fake), "sts", batch, stage=SimpleNamespace(index=index), step=0)
        expected = loss(*fake(("sts"), batch).chunk(3))
        assert torch.equal(out.logged, expected) and torch.equal(out.loss, 2.0 * expected)
        assert objective.describe(SimpleNamespace(index=index)) == name
    assert fake.calls[0] == ("sts", {"vectors": True})
