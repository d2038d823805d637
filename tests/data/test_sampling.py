from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from mtbert.config import parse_recipe
from mtbert.data.sampling import TaskSampler, anneal_alpha, run_progress, total_steps
from mtbert.training.stages import plan_stages

SIZES = {"big": 8000, "mid": 2000, "small": 500}
BATCHES = {"big": 250, "mid": 63, "small": 16}


def sampler(strategy, **kw):
    return TaskSampler(strategy, SIZES, BATCHES, seed=0, **kw)


def test_round_robin_cycles_in_recipe_order():
    s = sampler("round_robin")
    assert [s.tasks_at(i, 0.0)[0] for i in range(6)] == ["big", "mid", "small"] * 2
    assert s.steps_per_epoch == 3 * 250


def test_all_tasks_every_step():
    s = sampler("all_tasks")
    assert s.tasks_at(17, 0.5) == ["big", "mid", "small"] and s.steps_per_epoch == 250


def test_epoch_of_random_strategies_is_every_batch_once():
    assert sampler("proportional").steps_per_epoch == 250 + 63 + 16


@pytest.mark.parametrize("strategy,expected", [
    ("proportional", np.array([8000, 2000, 500]) / 10500),
    ("temperature", np.sqrt([8000, 2000, 500]) / np.sqrt([8000, 2000, 500]).sum()),
    ("uniform", np.full(3, 1 / 3)),
])
def test_probabilities_and_draw_frequencies(strategy, expected):
    s = sampler(strategy, temperature=2.0)
    np.testing.assert_allclose(s.probabilities(0.0), expected)
    np.testing.assert_allclose(s.probabilities(1.0), expected)  # only annealed moves with the run's progress
    counts = Counter(s.tasks_at(i, 0.3)[0] for i in range(6000))
    observed = np.array([counts[n] for n in SIZES]) / 6000
    np.testing.assert_allclose(observed, expected, atol=0.025)


PROPORTIONAL = np.array([8000, 2000, 500]) / 10500


def annealed_p(alpha: float) -> np.ndarray:
    weights = np.array([8000, 2000, 500]) ** alpha
    return weights / weights.sum()


def test_annealing_is_stickland_and_murray_counted_in_steps():
    # Their alpha = 1 - decay * (e - 1) / (E - 1) in epoch e of E is ours with epochs as the unit.
    for epochs in (2, 3, 5):
        for e in range(1, epochs + 1):
            expected = 1 - 0.8 * (e - 1) / (epochs - 1)
            assert anneal_alpha(run_progress(e - 1, epochs), 0.8) == pytest.approx(expected)
    assert run_progress(0, 1) == 0.0  # a one-step run stays at its start
    s = sampler("annealed", anneal_decay=0.5)
    np.testing.assert_allclose(s.probabilities(0.0), PROPORTIONAL)
    np.testing.assert_allclose(s.probabilities(1.0), annealed_p(0.5))
    # Draws follow the annealed p: at the end of a run the small task is drawn about 5 times as often.
    counts = Counter(sampler("annealed").tasks_at(i, 1.0)[0] for i in range(6000))
    np.testing.assert_allclose([counts[n] / 6000 for n in SIZES], annealed_p(0.2), atol=0.025)


def planned_stage(**train):
    """The one stage the run plans, over streams of SIZES and BATCHES, with annealed sampling."""
    recipe = parse_recipe({"name": "t", "output_dir": "out", "model": {"init": "random", "tokenizer": "tok"},
                           "tasks": {name: {} for name in SIZES}, "sampling": {"strategy": "annealed"},
                           "train": train})
    streams = {n: SimpleNamespace(pass_size=SIZES[n], batches_per_pass=BATCHES[n]) for n in SIZES}
    (stage,) = plan_stages(recipe, [SimpleNamespace(streams=streams)], recipe.train.grad_accum)  # its objective
    return stage


def test_a_one_epoch_run_anneals_from_its_first_step_to_its_last():
    stage = planned_stage(epochs=1)
    assert stage.steps == 250 + 63 + 16  # 329 steps: the middle one is step 164 (0-based)
    np.testing.assert_allclose(list(stage.probabilities_at(0).values()), PROPORTIONAL)
    np.testing.assert_allclose(list(stage.probabilities_at(164).values()), annealed_p(0.6))
    np.testing.assert_allclose(list(stage.probabilities_at(328).values()), annealed_p(0.2))
    # The draws follow: the small task comes up far more often in the last tenth than in the first.
    first = Counter(stage.tasks_at(step, 0, 1)[0] for step in range(33))
    last = Counter(stage.tasks_at(step, 0, 1)[0] for step in range(296, 329))
    assert last["small"] > first["small"] + 3


def test_a_max_steps_run_shorter_than_an_epoch_anneals_over_its_steps():
    stage = planned_stage(epochs=3, max_steps=41)
    assert stage.steps == 41 and stage.steps_per_epoch == 329
    for step, alpha in ((0, 1.0), (20, 0.6), (40, 0.2)):
        np.testing.assert_allclose(list(stage.probabilities_at(step).values()), annealed_p(alpha))


def test_with_accumulation_the_batches_of_a_step_share_its_progress():
    stage = planned_stage(epochs=1, grad_accum=2)
    assert stage.steps == 165
    assert stage.progress(0) == 0.0 and stage.progress(82) == 0.5 and stage.progress(164) == 1.0
    # Micro-batch m of step t is draw 2t + m of the sampler, at step t's progress.
    for step in (0, 50, 164):
        for micro in (0, 1):
            assert stage.tasks_at(step, micro, 2) == stage.sampler.tasks_at(2 * step + micro, step / 164)


def test_the_draws_follow_from_the_step_alone_as_a_resumed_run_needs():
    whole = [planned_stage(epochs=1).tasks_at(step, 0, 1) for step in range(329)]
    resumed = planned_stage(epochs=1)  # a fresh plan, asked from step 100 on, as after --resume
    assert [resumed.tasks_at(step, 0, 1) for step in range(100, 329)] == whole[100:]


def test_same_seed_same_sequence_different_seed_differs():
    a = [sampler("proportional").tasks_at(i, 0.0) for i in range(200)]
    b = [sampler("proportional").tasks_at(i, 0.0) for i in range(200)]
    c = [TaskSampler("proportional", SIZES, BATCHES, seed=1).tasks_at(i, 0.0) for i in range(200)]
    assert a == b and a != c
    # a pure function of the step: asking out of order gives the same answer (resume needs nothing else)
    assert [sampler("proportional").tasks_at(i, 0.0) for i in reversed(range(200))] == a[::-1]


def test_total_steps():
    assert total_steps(801, 1, 1, None) == 801
    assert total_steps(801, 2, 4, None) == 401
    assert total_steps(801, 3, 1, 10) == 10


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown sampling strategy"):
        sampler("roundrobin")


def test_size_cap_counts_big_tasks_as_at_most_k():
    capped = sampler("proportional", size_cap=2000).probabilities(0.0)
    assert np.allclose(capped, np.array([2000, 2000, 500]) / 4500)
    assert sampler("proportional", size_cap=2000).steps_per_epoch == 250 + 63 + 16  # an epoch is still every batch


def test_min_share_keeps_every_task_above_the_floor_and_sums_to_one():
    plain = sampler("proportional").probabilities(0.0)
    floored = sampler("proportional", min_share=0.2).probabilities(0.0)
    assert np.isclose(floored.sum(), 1.0) and floored.min() >= 0.2
    assert np.allclose(floored, 0.2 + 0.4 * plain)
    with pytest.raises(ValueError, match="min_share"):
        sampler("proportional", min_share=0.5)


@pytest.mark.parametrize("sampling,message", [
    ({"strategy": "round_robin", "min_share": 0.1}, "random strategies"),
    ({"strategy": "uniform", "size_cap": 10}, "proportional, temperature and annealed"),
    ({"strategy": "temperature", "min_share": 0.6}, "at most 0.5"),
])
def test_recipe_refuses_caps_where_they_cannot_act(sampling, message):
    from mtbert.errors import MtbertError

    raw = {"name": "x", "model": {"tokenizer": "tok"}, "tasks": {"sst": {}, "quora": {}}, "sampling": sampling}
    with pytest.raises(MtbertError, match=message):
        parse_recipe(raw)
