from collections import Counter

import numpy as np
import pytest

from mtbert.data.sampling import TaskSampler, total_steps

SIZES = {"big": 8000, "mid": 2000, "small": 500}
BATCHES = {"big": 250, "mid": 63, "small": 16}


def sampler(strategy, **kw):
    return TaskSampler(strategy, SIZES, BATCHES, seed=0, **kw)


def test_round_robin_cycles_in_recipe_order():
    s = sampler("round_robin")
    assert [s.tasks_at(i)[0] for i in range(6)] == ["big", "mid", "small"] * 2
    assert s.steps_per_epoch == 3 * 250


def test_all_tasks_every_step():
    s = sampler("all_tasks")
    assert s.tasks_at(17) == ["big", "mid", "small"] and s.steps_per_epoch == 250


def test_epoch_of_random_strategies_is_every_batch_once():
    assert sampler("proportional").steps_per_epoch == 250 + 63 + 16


@pytest.mark.parametrize("strategy,expected", [
    ("proportional", np.array([8000, 2000, 500]) / 10500),
    ("temperature", np.sqrt([8000, 2000, 500]) / np.sqrt([8000, 2000, 500]).sum()),
    ("uniform", np.full(3, 1 / 3)),
])
def test_probabilities_and_draw_frequencies(strategy, expected):
    s = sampler(strategy, temperature=2.0)
    np.testing.assert_allclose(s.probabilities(0), expected)
    counts = Counter(s.tasks_at(i)[0] for i in range(6000))
    observed = np.array([counts[n] for n in SIZES]) / 6000
    np.testing.assert_allclose(observed, expected, atol=0.025)


def test_annealed_alpha_follows_stickland_and_murray():
    s = sampler("annealed", epochs=5)
    per_epoch = s.steps_per_epoch
    alphas = [s.annealing_alpha(e * per_epoch) for e in range(5)]
    np.testing.assert_allclose(alphas, [1 - 0.8 * e / 4 for e in range(5)])
    np.testing.assert_allclose(s.probabilities(0), np.array([8000, 2000, 500]) / 10500)
    last = np.array([8000, 2000, 500]) ** 0.2
    np.testing.assert_allclose(s.probabilities(4 * per_epoch), last / last.sum())
    assert sampler("annealed", epochs=1).annealing_alpha(0) == 1.0


def test_same_seed_same_sequence_different_seed_differs():
    a = [sampler("proportional").tasks_at(i) for i in range(200)]
    b = [sampler("proportional").tasks_at(i) for i in range(200)]
    c = [TaskSampler("proportional", SIZES, BATCHES, seed=1).tasks_at(i) for i in range(200)]
    assert a == b and a != c
    # a pure function of the step: asking out of order gives the same answer (resume needs nothing else)
    assert [sampler("proportional").tasks_at(i) for i in reversed(range(200))] == a[::-1]


def test_total_steps():
    assert total_steps(801, 1, 1, None) == 801
    assert total_steps(801, 2, 4, None) == 401
    assert total_steps(801, 3, 1, 10) == 10


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown sampling strategy"):
        sampler("roundrobin")
