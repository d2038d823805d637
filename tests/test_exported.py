import json
import sys

import pytest
import torch
from safetensors.torch import save_file

from mtbert.config import dump_recipe, load_recipe
from mtbert.data.loading import check_tokenizer_fits, check_vocabulary, load_tokenizer
from mtbert.data.synthetic import save_tokenizer
from mtbert.errors import MtbertError
from mtbert.exported import export_model, load_model
from mtbert.tasks import resolve_tasks
from mtbert.training.setup import build_model

from conftest import WORDS
from helpers import write_recipe

TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "?", ",", "."]


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


# ---------------------------------------------------------------------------------------------
# A tokenizer that cannot serve the model, and folders that ask for code


def test_a_tokenizer_of_another_model_is_refused_before_any_prediction(exported, tmp_path):
    """More ids than the embedding has rows: an IndexError (or garbage) the first time a new word comes."""
    _, folder = exported
    save_tokenizer({token: i for i, token in enumerate(TOKENS + [f"w{i}" for i in range(100)])}, folder)
    with pytest.raises(MtbertError, match=r"has 153 ids but the model's word embedding has 53 rows"):
        load_model(folder)


def test_added_special_tokens_need_embedding_rows_too(tokenizer_dir):
    tokenizer = load_tokenizer(str(tokenizer_dir))
    check_tokenizer_fits(tokenizer, 53, "fits")
    with pytest.raises(MtbertError, match="has 53 ids"):
        check_tokenizer_fits(tokenizer, 52, "tok")
    tokenizer.add_special_tokens({"additional_special_tokens": ["[NEW]"]})
    with pytest.raises(MtbertError, match="has 54 ids but the model's word embedding has 53 rows"):
        check_tokenizer_fits(tokenizer, 53, "tok")


def test_a_tokenizer_without_its_vocabulary_is_refused(tmp_path):
    save_tokenizer({token: i for i, token in enumerate(TOKENS)}, tmp_path)
    assert len(load_tokenizer(str(tmp_path))) == len(TOKENS)
    for name in ("tokenizer.json", "vocab.txt"):
        (tmp_path / name).unlink(missing_ok=True)
    with pytest.raises(MtbertError, match=r"no vocabulary besides its 5 special tokens, so every word would be "
                                          r"\[UNK\]"):
        load_tokenizer(str(tmp_path))


def test_a_tokenizer_that_maps_its_own_words_to_unk_is_refused(tokenizer_dir):
    tokenizer = load_tokenizer(str(tokenizer_dir))
    check_vocabulary(tokenizer, "fine")

    class Broken:  # a vocabulary whose model turns every word into [UNK]
        all_special_tokens, unk_token, unk_token_id = ["[UNK]"], "[UNK]", 1

        def get_vocab(self):
            return tokenizer.get_vocab()

        def __call__(self, text, add_special_tokens):
            return {"input_ids": [1] * len(text.split())}

    with pytest.raises(MtbertError, match=r"broken: the tokenizer maps words of its own vocabulary .* to \[UNK\]"):
        check_vocabulary(Broken(), "broken")


def test_loading_a_tokenizer_never_trusts_remote_code(tokenizer_dir, monkeypatch):
    import transformers

    seen = {}
    real = transformers.AutoTokenizer.from_pretrained

    def spy(name, **kwargs):
        seen.update(kwargs)
        return real(name, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy)
    load_tokenizer(str(tokenizer_dir))
    assert seen.get("trust_remote_code") is False


def test_nothing_asks_a_question_on_standard_input(tmp_path, monkeypatch):
    """transformers asks "Do you wish to run the custom code? [y/N]" on stdin when trust_remote_code is left
    unset; mtbert refuses the folder first, and sets it to False besides. A read of stdin fails this test."""
    import builtins
    import io

    class NoReading(io.StringIO):
        def read(self, *args):
            raise AssertionError("standard input was read")

        readline = read

    monkeypatch.setattr(sys, "stdin", NoReading())
    monkeypatch.setattr(builtins, "input", lambda *args: pytest.fail("input() was called"))
    save_tokenizer({token: i for i, token in enumerate(TOKENS)}, tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del config["tokenizer_class"]
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "evil.py").write_text("raise SystemExit('code from the folder ran')\n")
    with pytest.raises(MtbertError, match="tokenizer_config.json: asks for custom code"):
        load_tokenizer(str(tmp_path))
    # And transformers itself, given trust_remote_code=False, neither runs the code nor asks.
    import transformers
    try:
        transformers.AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=False)
    except ValueError as error:
        assert "trust_remote_code" in str(error)


def test_allow_pickle_is_off_by_default():
    from mtbert.config import ModelConfig

    assert ModelConfig().allow_pickle is False
