"""`mtbert export`: one task of a trained model as a folder plain transformers loads."""

import errno
import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
import transformers
from typer.testing import CliRunner

from mtbert.cli import app
from mtbert.commands.export import EXPORT_MARKER, export_hf
from mtbert.errors import MtbertError
from mtbert.exported import load_model
from mtbert.objectives.supervised import predictions

from helpers import random_checkpoint

TASKS = {
    "sst": {}, "quora": {}, "sts": {},  # classes, binary (cross), regression (cross): cls pooler, linear head
    "rte": {},  # classes with label names
    "stsb": {"pair_encoding": "siamese"}, "cfimdb": {"pooler": "mean"}, "sst2": {"head": {"type": "mlp"}},
}
SENTENCES = ["the film was very good", "awful plot", "a dull story , not moving", "what"]
SECOND = ["the movie is great", "why", "the actor plays guitar on stage", "a man runs in the park"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tokenizer_dir):
    return random_checkpoint(tmp_path_factory.mktemp("export"), tokenizer_dir, TASKS)


@pytest.fixture(scope="module")
def loaded(ckpt):
    return load_model(ckpt)


def encode(tokenizer, pair: bool) -> dict[str, torch.Tensor]:
    args = (SENTENCES, SECOND) if pair else (SENTENCES,)
    batch = tokenizer(*args, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # a padded batch
    return dict(batch)


def test_encoder_export_loads_with_automodel_and_matches(ckpt, loaded, tmp_path):
    folder = export_hf(ckpt, "sst", tmp_path / "hf")
    hf_model = transformers.AutoModel.from_pretrained(folder).eval()
    assert type(hf_model).__name__ == "BertModel"
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    for pair in (False, True):
        batch = encode(hf_tokenizer, pair)
        assert torch.equal(batch["input_ids"], encode(loaded.tokenizer, pair)["input_ids"])
        with torch.no_grad():
            ours = loaded.model.encoder_for("sst")(**batch)
            theirs = hf_model(**batch)
        # Observed: 0.0 everywhere, pad positions included.
        torch.testing.assert_close(theirs.last_hidden_state, ours.last_hidden_state, atol=1e-5, rtol=0)
        torch.testing.assert_close(theirs.pooler_output, ours.pooler_output, atol=1e-5, rtol=0)
    marker = json.loads((folder / EXPORT_MARKER).read_text())
    assert marker["task"] == "sst" and marker["with_head"] is False
    assert not list(tmp_path.glob(".*"))  # no staging folder left behind


@pytest.mark.parametrize("task,pair", [("sst", False), ("quora", True), ("sts", True), ("rte", True)])
def test_with_head_gives_mtbert_predictions(ckpt, loaded, tmp_path, task, pair):
    folder = export_hf(ckpt, task, tmp_path / task, with_head=True)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = encode(loaded.tokenizer, pair)
    with torch.no_grad():
        prediction, probs = predictions(loaded.model.config.tasks[task].kind, loaded.model(task, batch))
        logits = hf_model(**batch).logits
    kind = loaded.model.config.tasks[task].kind
    if kind == "regression":
        assert hf_model.config.problem_type == "regression" and hf_model.config.num_labels == 1
        torch.testing.assert_close(logits.squeeze(-1), prediction, atol=1e-5, rtol=0)
        return
    assert hf_model.config.problem_type == "single_label_classification"
    assert torch.equal(logits.argmax(-1), prediction)
    torch.testing.assert_close(logits.softmax(-1), probs, atol=1e-5, rtol=0)
    assert len(set(prediction.tolist())) > 1  # the comparison is not between two constant outputs
    assert hf_model.config.num_labels == {"sst": 5, "quora": 2, "rte": 2}[task]
    expected = ["entailment", "not_entailment"] if task == "rte" else [f"LABEL_{i}" for i in range(logits.shape[1])]
    assert [hf_model.config.id2label[i] for i in range(logits.shape[1])] == expected
    assert hf_model.config.label2id[expected[1]] == 1


@pytest.mark.parametrize("task,message", [("stsb", "siamese encoding"), ("cfimdb", "pooler is 'mean'"),
                                          ("sst2", "its head is mlp")])
def test_heads_transformers_cannot_express_are_refused(ckpt, loaded, tmp_path, task, message):
    with pytest.raises(MtbertError, match=message) as error:
        export_hf(ckpt, task, tmp_path / "hf", with_head=True)
    assert "without --with-head" in str(error.value)
    assert not list(tmp_path.iterdir())  # nothing written
    export_hf(ckpt, task, tmp_path / "hf")  # the encoder alone still exports: the task's, weight for weight
    hf_model = transformers.AutoModel.from_pretrained(tmp_path / "hf")
    ours = loaded.model.encoder_for(task).state_dict()
    theirs = hf_model.state_dict()
    assert type(hf_model).__name__ == "BertModel" and ours.keys() <= theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)


def test_unknown_task_and_foreign_folder_refused_re_export_allowed(ckpt, tmp_path):
    with pytest.raises(MtbertError, match=r"'nope' is not in this checkpoint .*its tasks: sst, quora, sts"):
        export_hf(ckpt, "nope", tmp_path / "hf")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(MtbertError, match="not written by mtbert export"):
        export_hf(ckpt, "sst", foreign)
    assert [p.name for p in foreign.iterdir()] == ["mine.txt"]
    with pytest.raises(MtbertError, match="not written by mtbert export"):
        export_hf(ckpt, "sst", ckpt)  # never over the checkpoint itself
    (tmp_path / "empty").mkdir()
    export_hf(ckpt, "sst", tmp_path / "empty", with_head=True)
    export_hf(ckpt, "quora", tmp_path / "empty")  # a previous export is replaced whole
    assert json.loads((tmp_path / "empty" / "config.json").read_text())["architectures"] == ["BertModel"]
    assert json.loads((tmp_path / "empty" / EXPORT_MARKER).read_text())["task"] == "quora"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "foreign"]


def test_failed_write_leaves_previous_export_untouched(ckpt, tmp_path, monkeypatch):
    folder = export_hf(ckpt, "sst", tmp_path / "hf")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def fail(tensors, filename, metadata):
        Path(filename).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(MtbertError, match=r"hf: cannot write the export \(No space left on device\); the previous "
                                          r"export is as it was"):
        export_hf(ckpt, "sts", folder, with_head=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_an_interrupted_exports_staging_folder_is_removed_by_the_next(ckpt, tmp_path):
    staging = tmp_path / ".hf.k3x9_q2a.tmp"  # what an export killed while writing leaves beside its target
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"half a file")
    unrelated = tmp_path / ".hf.notes"  # not a staging folder's name: left alone
    unrelated.mkdir()
    export_hf(ckpt, "sst", tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hf.notes", "hf"]


def test_an_export_killed_between_its_renames_puts_the_previous_one_back(ckpt, tmp_path, monkeypatch):
    """Killed after moving the previous export aside and before renaming the new one into place, an export
    leaves only `.old`: the next export restores it first, so that a failure then still loses nothing."""
    previous = export_hf(ckpt, "sst", tmp_path / "hf")
    files = {p.name: p.read_bytes() for p in previous.iterdir()}
    os.replace(previous, tmp_path / ".hf.abcd1234.old")

    def full(tensors, filename, metadata):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    with monkeypatch.context() as patch:
        patch.setattr(safetensors.torch, "save_file", full)
        with pytest.raises(MtbertError, match="the previous export is as it was"):
            export_hf(ckpt, "quora", tmp_path / "hf")
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    export_hf(ckpt, "quora", tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / EXPORT_MARKER).read_text())["task"] == "quora"


def test_push_to_hub_failure_is_one_mtbert_error(ckpt, tmp_path, monkeypatch):
    # Only the wiring: the real upload needs the network and a token.
    import huggingface_hub

    calls = []

    class FakeApi:
        def upload_folder(self, **kwargs):
            calls.append(kwargs)
            raise RuntimeError("401 Unauthorized\nmore detail")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    with pytest.raises(MtbertError, match=r"pushing it to the hub repo 'me/sst' failed \(RuntimeError: 401 "
                                          r"Unauthorized\)$"):
        export_hf(ckpt, "sst", tmp_path / "hf", push_to_hub="me/sst")
    assert calls[0]["repo_id"] == "me/sst" and calls[0]["folder_path"] == str(tmp_path / "hf")


def test_cli_export(ckpt, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["export", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output
    result = runner.invoke(app, ["export", str(ckpt), "--task", "sst", "--to", str(tmp_path / "hf"), "--with-head"])
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'hf'}" in result.output
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    result = runner.invoke(app, ["export", str(ckpt), "--task", "stsb", "--to", str(tmp_path / "x"), "--with-head"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error: task 'stsb'")
