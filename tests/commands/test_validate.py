import pytest

from mtbert.commands.validate import is_local_path, validate_recipe
from mtbert.config import load_recipe
from mtbert.errors import MtbertError

from helpers import write_recipe


@pytest.mark.parametrize("name,local", [
    ("bert-base-uncased", False), ("sentence-transformers/all-MiniLM-L6-v2", False),
    ("/models/bert", True), ("./bert", True), ("../bert", True), ("~/bert", True), ("runs/a/model", True),
])
def test_hub_names_are_not_taken_for_folders(name, local):
    assert is_local_path(name) is local


def test_missing_init_folder_and_unreachable_hub_name_say_what_they_are(tmp_path, tokenizer_dir, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time otherwise
    recipe_path = write_recipe(tmp_path, tokenizer_dir)
    with pytest.raises(MtbertError, match="model.init: folder ./no/such/folder not found"):
        validate_recipe(load_recipe(recipe_path, ["model.init=./no/such/folder"]))
    # A hub name is not a missing folder: offline, it fails where the tokenizer is fetched, naming the hub.
    hub_recipe = load_recipe(recipe_path, ["model.init=some-org/some-model", "model.tokenizer=some-org/some-model"])
    with pytest.raises(MtbertError, match="could not be loaded from a folder or the hub") as error:
        validate_recipe(hub_recipe)
    assert "not found" not in str(error.value).split(":")[0]
