"""The objective interface (mtbert/objectives/base.py): what every objective inherits."""

import contextlib

import pytest
import torch

from mtbert.objectives.base import LossMeter, Objective, ObjectiveContext, TaskLoss, TrainingModel


def bare_objective() -> Objective:
    context = ObjectiveContext(recipe=None, tasks={}, streams={"a": "stream"}, train={}, tokenizer=None, model=None,
                               device=torch.device("cpu"))
    return Objective(context, {0: None})


def test_by_default_one_backward_of_the_sum_in_sampling_order():
    weights = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    losses = {"b": weights[1] * 3, "a": weights[0] ** 2}
    received = []
    bare_objective().backward(None, losses, lambda loss: (received.append(loss), loss.backward()))
    assert len(received) == 1 and received[0].item() == 7.0
    assert weights.grad.tolist() == [2.0, 3.0]


def test_the_base_objective_draws_the_run_s_batches_keeps_no_state_and_learns_nothing():
    objective = bare_objective()
    assert objective.streams == {"a": "stream"}
    assert objective.state_parts() == {} and objective.parameters() == [] and objective.log_values(None) == {}
    objective.start_stage(None, None)
    objective.after_step(None, stage=None, step=0)
    with pytest.raises(NotImplementedError):
        objective.loss(None, "a", {}, stage=None, step=0)


def test_the_training_model_calls_the_prepared_model_and_lends_the_module_and_its_precision():
    calls = []
    model = TrainingModel(forward=lambda *args, **kw: calls.append((args, kw)) or "out", module="module")
    assert model("sst", {"x": 1}, vectors=True) == "out" and calls == [(("sst", {"x": 1}), {"vectors": True})]
    assert model.module == "module" and isinstance(model.autocast(), contextlib.nullcontext)


def test_a_task_loss_is_what_backward_gets_and_what_the_log_shows():
    out = TaskLoss(torch.tensor(2.0), torch.tensor(1.0))
    assert out.loss.item() == 2.0 and out.logged.item() == 1.0


def test_the_loss_meter_averages_since_the_last_record_and_resumes():
    meter = LossMeter(torch.device("cpu"))
    for value in (1.0, 2.0, 6.0):
        meter.add("sst", torch.tensor(value, requires_grad=True))
    meter.add("sts.adv", torch.tensor(0.5))
    state = meter.state_dict()
    again = LossMeter(torch.device("cpu"))
    again.load_state_dict(state)
    assert meter.means() == again.means() == {"sst": 3.0, "sts.adv": 0.5}
    assert meter.means() == {}  # read once
