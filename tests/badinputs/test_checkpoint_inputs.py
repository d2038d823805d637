"""Bad-input corpus: damaged exported models, damaged resumable checkpoints, output folders and files that
must not be overwritten, writes that fail. Each case damages a copy of one tiny trained run.

Every case runs the real command line and asserts, through `fails_cleanly`, a non-zero exit with a few
lines naming the culprit, no traceback, and every watched file byte-identical afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from mtbert.config import load_recipe
from mtbert.training import faults
from mtbert.training.loop import train

from badinput import fails_cleanly
from helpers import write_recipe

WEIGHTS = "model.safetensors"
TASKS = {"sst": {}, "quora": {}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer_dir):
    """A two-step run with a checkpoint after each step and its exported model; (recipe, run folder)."""
    tmp = tmp_path_factory.mktemp("checkpoint-inputs")
    recipe = write_recipe(tmp, tokenizer_dir, tasks=TASKS,
                          train={"max_steps": 2, "checkpoint_every": 1, "keep_checkpoints": 5, "log_every": 1})
    with pytest.MonkeyPatch.context() as patch:
        # The cache every test of the session uses (conftest.py): cases then read their data without
        # tokenising it again, and print nothing but their error.
        patch.setenv("MTBERT_CACHE", str(tmp_path_factory.getbasetemp() / "mtbert-cache"))
        patch.delenv(faults.ENV, raising=False)
        train(load_recipe(recipe))
    return recipe, tmp / "ckpt"


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run folder, free to damage."""
    return Path(shutil.copytree(trained[1], tmp_path / "run", symlinks=True))


@pytest.fixture
def recipe(trained) -> Path:
    return trained[0]


# ---------------------------------------------------------------------------------------------
# Damaging an exported model


def rewrite_weights(folder: Path, *, tensors=None, metadata=None) -> None:
    """Write model.safetensors again with changed tensors and/or metadata (callables taking the old)."""
    path = folder / WEIGHTS
    with safe_open(str(path), framework="pt") as f:
        old_meta = f.metadata()
        old_tensors = {key: f.get_tensor(key) for key in f.keys()}
    save_file(tensors(old_tensors) if tensors else old_tensors, path,
              metadata=metadata(old_meta) if metadata else old_meta)


def change_config(change):
    def edit(meta):
        config = json.loads(meta["mtbert_config"])
        change(config)
        return meta | {"mtbert_config": json.dumps(config)}
    return edit


def first_matrix(tensors) -> str:
    return next(key for key, value in tensors.items() if value.ndim == 2 and key.startswith("heads."))


def test_a_tensor_of_the_wrong_shape(run):
    key = {}

    def shrink(tensors):
        key["name"] = first_matrix(tensors)
        return tensors | {key["name"]: tensors[key["name"]][:, :-1].contiguous()}

    rewrite_weights(run, tensors=shrink)
    fails_cleanly(["evaluate", run], names=[WEIGHTS, key["name"]], watch=[run])


def test_a_stored_config_without_a_field(run):
    rewrite_weights(run, metadata=change_config(lambda c: c["encoder"].pop("hidden_size")))
    fails_cleanly(["evaluate", run], names=[WEIGHTS, "hidden_size"], watch=[run])


def test_a_stored_task_without_a_field(run):
    rewrite_weights(run, metadata=change_config(lambda c: c["tasks"]["sst"].pop("kind")))
    fails_cleanly(["evaluate", run], names=[WEIGHTS, "kind"], watch=[run])


def test_a_stored_config_whose_hidden_size_heads_do_not_divide(run):
    rewrite_weights(run, metadata=change_config(lambda c: c["encoder"].update(num_attention_heads=3)))
    fails_cleanly(["evaluate", run], names=[WEIGHTS, "num_attention_heads"], watch=[run])


def test_a_stored_config_that_is_not_json(run):
    rewrite_weights(run, metadata=lambda meta: meta | {"mtbert_config": '{"encoder": {'})
    fails_cleanly(["evaluate", run], names=[WEIGHTS], watch=[run])


def test_a_stored_recipe_that_is_not_yaml(run):
    rewrite_weights(run, metadata=lambda meta: meta | {"recipe": "tasks: [sst\nmodel: {"})
    fails_cleanly(["evaluate", run], names=[WEIGHTS, "recipe"], watch=[run])


def test_a_stored_recipe_that_is_not_a_recipe(run):
    rewrite_weights(run, metadata=lambda meta: meta | {"recipe": "- just\n- a list\n"})
    fails_cleanly(["evaluate", run], names=[WEIGHTS, "recipe"], watch=[run])


def test_stored_metrics_that_are_not_json(run):
    rewrite_weights(run, metadata=lambda meta: meta | {"metrics": "{overall: nan"})
    fails_cleanly(["evaluate", run], names=[WEIGHTS], watch=[run])


def test_a_truncated_weights_file(run):
    data = (run / WEIGHTS).read_bytes()
    (run / WEIGHTS).write_bytes(data[: len(data) // 2])
    fails_cleanly(["evaluate", run], names=[WEIGHTS], watch=[run])


def test_a_missing_weights_file(run):
    (run / WEIGHTS).unlink()
    fails_cleanly(["evaluate", run], names=[WEIGHTS], watch=[run])


def test_weights_that_are_a_symlink_loop(run):
    (run / WEIGHTS).unlink()
    (run / WEIGHTS).symlink_to(WEIGHTS)
    fails_cleanly(["evaluate", run], names=[WEIGHTS], watch=[run])


def test_a_model_folder_that_is_a_symlink_loop(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    fails_cleanly(["evaluate", loop], names=[str(loop)], watch=[tmp_path])


def test_a_folder_that_is_not_an_mtbert_model(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model\n")
    fails_cleanly(["evaluate", tmp_path], names=[str(tmp_path)], watch=[tmp_path])


def test_a_truncated_tokenizer_file(run):
    data = (run / "tokenizer.json").read_bytes()
    (run / "tokenizer.json").write_bytes(data[: len(data) // 2])
    (run / "vocab.txt").unlink(missing_ok=True)
    fails_cleanly(["evaluate", run], names=["tokenizer"], watch=[run])


def test_predict_on_a_damaged_model(run):
    rewrite_weights(run, metadata=change_config(lambda c: c["encoder"].update(num_attention_heads=3)))
    fails_cleanly(["predict", "--ckpt", run, "--task", "sst"], names=[WEIGHTS], watch=[run],
                  input="a good film\n")


def test_export_of_a_damaged_model(run, tmp_path):
    rewrite_weights(run, metadata=change_config(lambda c: c["encoder"].pop("num_hidden_layers")))
    fails_cleanly(["export", run, "--task", "sst", "--to", tmp_path / "hf"], names=[WEIGHTS], watch=[run])
    assert not (tmp_path / "hf").exists()


def test_report_on_a_damaged_model(run):
    rewrite_weights(run, metadata=lambda meta: meta | {"recipe": "tasks: {sst: {}}\nmodel: [1, 2\n"})
    fails_cleanly(["report", run], names=[WEIGHTS], watch=[run])


# ---------------------------------------------------------------------------------------------
# Damaging a resumable checkpoint


def flip_a_byte(path: Path) -> None:
    """Change one byte near the end (inside the tensor data, so the file still parses)."""
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


def fails_cleanly_after_work(args, *, names, watch) -> str:
    """A command that fails after it has begun its work (training, scoring) has printed that work (parameter
    counts, progress bars, a scores table) first, in any number of lines; its error is still one line."""
    message = fails_cleanly(args, names=names, watch=watch, max_lines=60)
    errors = re.findall(r"error: (.*)", message)
    assert len(errors) == 1, message
    for name in names:
        assert str(name) in errors[0], errors[0]
    return message


def resume(recipe: Path, run: Path, spec: str | Path) -> list[str]:
    return ["train", recipe, f"output_dir={run}", "--resume", spec]


def test_resuming_a_checkpoint_whose_weights_changed_after_it_was_written(recipe, run):
    step = run / "checkpoints" / "step-2"
    flip_a_byte(step / "model.safetensors")
    fails_cleanly(resume(recipe, run, step), names=[str(step), "model.safetensors"], watch=[run])


def test_resuming_a_checkpoint_whose_state_was_replaced(recipe, run):
    step = run / "checkpoints" / "step-2"
    (step / "rng.process-0.json").write_text('{"tensors_file": null, "state": {"python": 5}}\n')
    fails_cleanly(resume(recipe, run, step), names=["rng.process-0.json"], watch=[run])


def test_resuming_a_checkpoint_missing_a_part(recipe, run):
    step = run / "checkpoints" / "step-2"
    (step / "optimizer.json").unlink()
    fails_cleanly(resume(recipe, run, step), names=["optimizer.json"], watch=[run])


def test_resuming_a_checkpoint_with_a_truncated_manifest(recipe, run):
    step = run / "checkpoints" / "step-2"
    text = (step / "state.json").read_text()
    (step / "state.json").write_text(text[: len(text) // 2])
    fails_cleanly(resume(recipe, run, step), names=["state.json"], watch=[run])


def test_resuming_a_checkpoint_with_truncated_tensors(recipe, run):
    step = run / "checkpoints" / "step-2"
    data = (step / "optimizer.safetensors").read_bytes()
    (step / "optimizer.safetensors").write_bytes(data[:100])
    fails_cleanly(resume(recipe, run, step), names=["optimizer.safetensors"], watch=[run])


def test_resume_latest_when_every_checkpoint_is_damaged(recipe, run):
    for step in ("step-1", "step-2"):
        flip_a_byte(run / "checkpoints" / step / "model.safetensors")
    message = fails_cleanly(resume(recipe, run, "latest"), names=["step-1", "step-2"], watch=[run])
    assert "skipped" in message


# ---------------------------------------------------------------------------------------------
# Output folders and files that are not mtbert's to replace


def test_training_into_a_folder_of_the_users_files(recipe, tmp_path):
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "recipe.yaml").write_text("# my own recipe, not a run's\n")
    (mine / "metrics.json").write_text('{"mine": 1}\n')
    message = fails_cleanly(["train", recipe, f"output_dir={mine}"], names=[str(mine)], watch=[mine])
    assert "recipe.yaml" in message or "metrics.json" in message
    assert "--overwrite" in message


def test_training_into_a_file(recipe, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("mine\n")
    fails_cleanly(["train", recipe, f"output_dir={target}"], names=[str(target)], watch=[tmp_path])


def test_a_fresh_run_that_fails_early_leaves_the_earlier_run_in_its_folder(recipe, run, monkeypatch):
    monkeypatch.setenv(faults.ENV, "nan_loss_at_step:1")
    fails_cleanly_after_work(["train", recipe, f"output_dir={run}", "train.log_every=1"], names=["non-finite"],
                             watch=[run])


def test_evaluate_output_that_is_a_folder(run, tmp_path):
    folder = tmp_path / "scores"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine\n")
    fails_cleanly(["evaluate", run, "--output", folder], names=[str(folder)], watch=[tmp_path])


def test_evaluate_output_under_a_file(run, tmp_path):
    (tmp_path / "file").write_text("mine\n")
    fails_cleanly(["evaluate", run, "--output", tmp_path / "file" / "dev.json"], names=[str(tmp_path / "file")],
                  watch=[tmp_path / "file"])


def test_report_out_that_is_a_file(run, tmp_path):
    (tmp_path / "out").write_text("mine\n")
    fails_cleanly(["report", run, "--out", tmp_path / "out"], names=[str(tmp_path / "out")], watch=[tmp_path / "out"])


def test_submit_to_a_file(run, tmp_path):
    (tmp_path / "out").write_text("mine\n")
    fails_cleanly(["submit", run, "--to", tmp_path / "out", "--split", "dev"], names=[str(tmp_path / "out")],
                  watch=[tmp_path / "out"])


def test_predict_split_output_that_is_a_file(run, tmp_path):
    (tmp_path / "preds").write_text("mine\n")
    fails_cleanly(["predict", "--ckpt", run, "--task", "sst", "--split", "dev", "--output", tmp_path / "preds"],
                  names=[str(tmp_path / "preds")], watch=[tmp_path / "preds"])


def test_export_to_a_folder_of_the_users_files(run, tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "notes.md").write_text("mine\n")
    fails_cleanly(["export", run, "--task", "sst", "--to", tmp_path / "hf"], names=[str(tmp_path / "hf")],
                  watch=[tmp_path / "hf"])


def test_export_to_a_file(run, tmp_path):
    (tmp_path / "hf").write_text("mine\n")
    fails_cleanly(["export", run, "--task", "sst", "--to", tmp_path / "hf"], names=[str(tmp_path / "hf")],
                  watch=[tmp_path / "hf"])


# ---------------------------------------------------------------------------------------------
# Writes that fail (a full disk): one line naming the path, the previous file intact

def fail_replacing_under(monkeypatch, folder: Path) -> None:
    """os.replace into `folder` fails as on a full disk (root ignores read-only folders, so inject it)."""
    real = os.replace

    def replace(src, dst, **kwargs):
        if str(Path(dst).resolve()).startswith(str(folder.resolve())):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def test_a_full_disk_while_exporting_over_a_previous_export(run, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mtbert.cli import app

    hf = tmp_path / "hf"
    assert CliRunner().invoke(app, ["export", str(run), "--task", "sst", "--to", str(hf)]).exit_code == 0
    fail_replacing_under(monkeypatch, tmp_path)
    message = fails_cleanly(["export", run, "--task", "quora", "--to", hf], names=[str(hf)], watch=[tmp_path])
    assert "previous export is as it was" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]  # no staging folder left behind


def test_a_full_disk_while_writing_scores_over_a_previous_file(run, tmp_path, monkeypatch):
    scores = tmp_path / "dev.json"
    scores.write_text('{"previous": 1}\n')
    fail_replacing_under(monkeypatch, tmp_path)
    fails_cleanly_after_work(["evaluate", run, "--output", scores], names=[str(scores)], watch=[tmp_path])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.json", "run"]  # no temporary file left behind


def test_a_full_disk_while_saving_a_checkpoint(recipe, run, monkeypatch):
    """Resumed from step 1, the run fails writing step-2: step-1 and the exported model stay as they were."""
    shutil.rmtree(run / "checkpoints" / "step-2")
    (run / "checkpoints" / "latest").write_text("step-1\n")
    fail_replacing_under(monkeypatch, run / "checkpoints")
    fails_cleanly_after_work(resume(recipe, run, "latest"), names=["checkpoints"],
                             watch=[run / "checkpoints" / "step-1", run / "checkpoints" / "latest"])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-1"]  # nothing staged left


def test_a_full_disk_while_exporting_during_training(recipe, run, monkeypatch):
    shutil.rmtree(run / "checkpoints" / "step-2")
    (run / "checkpoints" / "latest").write_text("step-1\n")
    fail_replacing_under(monkeypatch, run / WEIGHTS)
    fails_cleanly_after_work(resume(recipe, run, "latest"), names=[WEIGHTS],
                             watch=[run / WEIGHTS, run / "checkpoints"])


def test_training_into_a_folder_under_a_file(recipe, tmp_path):
    """output_dir under a file: the folder cannot be made; one line names it."""
    (tmp_path / "file").write_text("mine\n")
    fails_cleanly(["train", recipe, f"output_dir={tmp_path / 'file' / 'run'}"], names=[str(tmp_path / "file")],
                  watch=[tmp_path / "file"])
