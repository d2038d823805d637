"""Distillation from per-task teachers: the soft-target terms by hand, the teacher's outputs computed once and
cached under a key like the tokenisation cache's, a teacher that does not match refused in one line, and a
distillation stage that trains."""

import dataclasses
import json
import math

import pytest
import torch

from mtbert import exported
from mtbert.config import StageConfig, load_recipe
from mtbert.errors import MtbertError
from mtbert.objectives import distillation
from mtbert.objectives.distillation import Distillation, check_teacher_task, distillation_loss, ensemble_target
from mtbert.training.loop import train

from conftest import write_cs224n
from helpers import learnable_sst, objective_context, write_recipe

SHORT = ["train.max_steps=3", "eval.every_steps=0", "eval.max_examples=8", "train.log_every=1"]


def test_soft_targets_and_terms_by_hand():
    # classes, T = 2: target softmax([2, 0] / 2) averaged with softmax([0, 2] / 2): [1/2, 1/2]
    target = ensemble_target("classes", [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])], 2.0)
    assert target.tolist()[0] == pytest.approx([0.5, 0.5])
    student = torch.tensor([[1.0, 0.0]])
    soft = torch.tensor([[0.25, 0.75]])
    e = math.exp(0.5)
    hand = -(0.25 * math.log(e / (e + 1)) + 0.75 * math.log(1 / (e + 1))) * 4  # soft cross-entropy at T 2, x T^2
    assert distillation_loss("classes", student, soft, 2.0).item() == pytest.approx(hand)
    p = 1 / (1 + math.exp(-1.5))  # binary: sigmoid(3 / 2) against 0.2
    assert distillation_loss("binary", torch.tensor([3.0]), torch.tensor([0.2]), 2.0).item() == pytest.approx(
        -(0.2 * math.log(p) + 0.8 * math.log(1 - p)) * 4)
    assert distillation_loss("regression", torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0]), 5.0).item() == 1.0
    assert ensemble_target("regression", [torch.tensor([1.0]), torch.tensor([3.0])], 5.0).tolist() == [2.0]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tokenizer_dir):
    """An exported sst-only model, trained for two steps."""
    root = tmp_path_factory.mktemp("teacher")
    train(load_recipe(write_recipe(root, tokenizer_dir, tasks={"sst": {}}),
                      [*SHORT, "train.max_steps=2", f"output_dir={root / 'sst'}"]))
    return root / "sst"


def student(tmp_path, tokenizer_dir, teacher, *overrides):
    context = objective_context(tmp_path, tokenizer_dir, overrides, distillation={"teachers": [str(teacher)]},
                                stages=[{"objective": "distillation"}])
    return context, Distillation(context, {0: StageConfig(objective="distillation")})


def test_teacher_outputs_are_computed_once_cached_and_keyed_by_what_was_read(tmp_path, tokenizer_dir, teacher):
    context, objective = student(tmp_path, tokenizer_dir, teacher)
    cached = sorted((distillation.cache_dir() / "teacher").glob("sst-*.safetensors"))
    assert len(cached) == 1 and objective.taught == ["sst"]
    # the targets are the teacher's own outputs on the training examples, at temperature 1 its probabilities
    loaded = exported.load_model(teacher)
    batch = objective.streams["sst"].next_batch()
    with torch.no_grad():
        logits = loaded.model.eval()("sst", {k: v for k, v in batch.items() if k not in ("labels", "teacher")})
    assert torch.allclose(batch["teacher"], logits.softmax(-1), atol=1e-5)
    assert "teacher" not in objective.streams["quora"].next_batch()  # no teacher of quora: gold labels alone
    # A second student reads the cache: the teacher does not run again
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(distillation, "tokenize_split", lambda *a, **k: pytest.fail("the teacher ran again"))
        _, again = student(tmp_path, tokenizer_dir, teacher)
    assert torch.equal(again.streams["sst"].targets, objective.streams["sst"].targets)
    # Other training examples: another key
    write_cs224n(tmp_path / "other" / "data")
    learnable_sst(tmp_path / "other" / "data", n_train=128)
    student(tmp_path / "other", tokenizer_dir, teacher)
    assert len(list((distillation.cache_dir() / "teacher").glob("sst-*.safetensors"))) == 2


def test_a_teacher_that_predicts_otherwise_is_one_clear_error(tmp_path, tokenizer_dir, teacher):
    context = objective_context(tmp_path, tokenizer_dir)
    sst = context.tasks["sst"]
    cases = [(dataclasses.replace(sst, num_labels=3), "sst has 5 classes there and 3 here"),
             (dataclasses.replace(sst, kind="binary"), "sst is classes there and binary here")]
    for task, words in cases:
        with pytest.raises(MtbertError, match=words) as error:
            check_teacher_task(task, sst, str(teacher))
        assert "\n" not in str(error.value) and str(teacher) in str(error.value)


@pytest.mark.slow
def test_a_distillation_stage_trains_and_logs_its_term(tmp_path, tokenizer_dir, teacher):
    path = write_recipe(tmp_path, tokenizer_dir, distillation={"teachers": [str(teacher)]},
                        stages=[{"objective": "distillation"}])
    train(load_recipe(path, [*SHORT, "sampling.strategy=all_tasks", f"output_dir={tmp_path / 'r'}"]))
    records = [json.loads(line) for line in (tmp_path / "r" / "train_log.jsonl").read_text().splitlines()]
    terms = [r["distillation_loss"] for r in records if "loss" in r]
    assert len(terms) == 3 and all(set(t) == {"sst"} and t["sst"] > 0 for t in terms)
