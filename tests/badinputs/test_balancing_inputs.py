"""Bad balancing, distillation and routing settings: each refused in one line naming the file and the key (or the
teacher's folder), before anything trains."""

from __future__ import annotations

import pytest
import yaml

from badinput import fails_cleanly
from helpers import write_recipe

BASE = {"name": "bad", "model": {"init": "random", "tokenizer": "tok", "max_length": 32,
                                 "size": {"hidden_size": 32, "num_layers": 2, "num_heads": 2,
                                          "intermediate_size": 64}},
        "tasks": {"sst": {}, "sts": {}}, "train": {"lr": 3.0e-5}}


def recipe(tmp_path, **changes):
    data = {**BASE, **changes}
    path = tmp_path / "bad.yaml"
    path.write_text("# mtbert validate bad.yaml\n" + yaml.safe_dump(data, sort_keys=False))
    return path


CASES = {
    # gradient surgery, GradNorm and FAMO compare the tasks within a step
    "surgery_round_robin": ({"balancing": {"method": "pcgrad"}}, ["balancing.method", "pcgrad", "all_tasks"]),
    "surgery_one_task": ({"balancing": {"method": "upgrad"}, "sampling": {"strategy": "all_tasks"},
                          "tasks": {"sst": {}}}, ["balancing.method", "at least two tasks"]),
    "famo_accumulated_window": ({"balancing": {"method": "famo"}, "train": {"lr": 3.0e-5, "grad_accum": 2}},
                                ["balancing.method", "famo", "all_tasks"]),
    "stage_gradnorm": ({"stages": [{"tasks": ["sst"], "balancing": {"method": "gradnorm"}}]},
                       ["stages.0.balancing.method", "gradnorm"]),
    "unknown_method": ({"balancing": {"method": "nash"}}, ["balancing.method", "nash"]),
    "learning_rate": ({"balancing": {"method": "uncertainty", "lr": 0.0}}, ["balancing.lr"]),
    "window": ({"balancing": {"method": "dwa", "window": 0}}, ["balancing.window"]),
    "balanced_contrastive": ({"stages": [{"objective": "ranking", "balancing": {"method": "dwa"}}],
                              "tasks": {"quora": {}, "sts": {}}}, ["stages.0.balancing.method", "ranking"]),
    "distillation_weight": ({"distillation": {"teachers": ["t"], "weight": 1.5}}, ["distillation.weight"]),
    "distillation_temperature": ({"distillation": {"temperature": 0}}, ["distillation.temperature"]),
    "distillation_without_teachers": ({"stages": [{"objective": "distillation"}]}, ["stages.0.objective", "teachers"]),
    "routing_outputs": ({"tasks": {"sst": {"pooler": "routing", "routing": {"outputs": 0}}, "sts": {}}},
                        ["tasks.sst.routing.outputs"]),
    "routing_without_its_pooler": ({"tasks": {"sst": {"routing": {"outputs": 2}}, "sts": {}}},
                                   ["sst", "routing", "pooler is cls"]),
}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_balancing_distillation_or_routing_setting(tmp_path, tokenizer_dir, case):
    changes, names = CASES[case]
    path = recipe(tmp_path, **changes)
    path.write_text(path.read_text().replace("tokenizer: tok", f"tokenizer: {tokenizer_dir}"))
    fails_cleanly(["validate", path], names=["bad.yaml", *names], watch=[tmp_path])


@pytest.mark.parametrize("teacher", ["missing", "not_a_model"])
def test_a_teacher_folder_that_is_no_model_is_one_line_naming_it(tmp_path, tokenizer_dir, teacher):
    folder = tmp_path / teacher
    if teacher == "not_a_model":
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"not safetensors")
    path = write_recipe(tmp_path, tokenizer_dir, distillation={"teachers": [str(folder)]},
                        stages=[{"objective": "distillation"}])
    # train prints its data and model summary first (max_lines), then one error line
    message = fails_cleanly(["train", path, "train.max_steps=1", f"output_dir={tmp_path / 'out'}"],
                            names=[str(folder)], watch=[tmp_path / "data", folder if folder.exists() else tmp_path],
                            max_lines=30)
    errors = [line for line in message.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(folder) in errors[0]
