import pytest
import torch
from safetensors.torch import save_file

from mtbert.checkpoint import export_model, load_model
from mtbert.config import dump_recipe, load_recipe
from mtbert.data.loading import load_tokenizer
from mtbert.errors import MtbertError
from mtbert.tasks import resolve_tasks
from mtbert.train import build_model

from helpers import write_recipe


@pytest.fixture
def exported(tmp_path, tokenizer_dir):
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir))
    tokenizer = load_tokenizer(recipe.model.tokenizer)
    model = build_model(recipe, resolve_tasks(recipe), tokenizer).eval()
    export_model(model, tokenizer, tmp_path / "ckpt", recipe=dump_recipe(recipe), metrics={"overall": 0.5})
    return model, tmp_path / "ckpt"


def test_round_trip_gives_identical_outputs(exported):
    model, folder = exported
    loaded = load_model(folder)
    ids = torch.tensor([[2, 7, 8, 3, 0], [2, 9, 3, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}
    pair = batch | {k + "_b": v for k, v in batch.items()}
    for task, inputs in (("sst", batch), ("quora", batch), ("sts", pair)):
        assert torch.equal(model(task, inputs), loaded.model(task, inputs))
    assert loaded.metrics == {"overall": 0.5}
    assert list(loaded.tasks) == ["sst", "quora", "sts"] and loaded.tasks["sts"].pair_encoding == "siamese"
    assert not list(folder.glob(".*"))


def test_data_dir_override(exported, tmp_path):
    assert load_model(exported[1], data_dir="elsewhere").recipe.data_dir == "elsewhere"


def test_missing_and_incomplete_folders(exported, tmp_path):
    with pytest.raises(MtbertError, match="checkpoint folder not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MtbertError, match="model.safetensors is missing"):
        load_model(tmp_path / "empty")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    save_file({"w": torch.zeros(2)}, foreign / "model.safetensors")
    with pytest.raises(MtbertError, match="not written by mtbert train"):
        load_model(foreign)
    (foreign / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(MtbertError, match="unreadable safetensors file"):
        load_model(foreign)
    folder = exported[1]
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(MtbertError, match="tokenizer files are missing"):
        load_model(folder)
