"""Bad-input corpus: model and tokenizer folders that ask for code, hold pickles, do not match the model,
or loop. A model folder is data: nothing in it runs, nothing asks a question on standard input, and a
tokenizer that cannot serve the model is an error at load time, never garbage predictions.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mtbert.commands.export import save_encoder
from mtbert.config import load_recipe
from mtbert.data.synthetic import save_tokenizer
from mtbert.model.bert import BertConfig, BertModel
from mtbert.training import faults
from mtbert.training.loop import train

from badinput import fails_cleanly
from conftest import WORDS
from helpers import write_recipe

TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "?", ",", "."]
# Imported (and so run) only if a loader executed code from the folder: it leaves this file behind.
EVIL_CODE = "import pathlib\npathlib.Path(__file__).with_name('CODE-RAN').write_text('ran')\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer_dir):
    """(recipe, exported run folder) of a two-step single-task run."""
    tmp = tmp_path_factory.mktemp("hostile")
    recipe = write_recipe(tmp, tokenizer_dir, tasks={"sst": {}}, train={"max_steps": 2})
    with pytest.MonkeyPatch.context() as patch:
        # The cache every test of the session uses (conftest.py): cases then read their data without
        # tokenising it again, and print nothing but their error.
        patch.setenv("MTBERT_CACHE", str(tmp_path_factory.getbasetemp() / "mtbert-cache"))
        patch.delenv(faults.ENV, raising=False)
        train(load_recipe(recipe))
    return recipe, tmp / "ckpt"


@pytest.fixture
def recipe(trained) -> Path:
    return trained[0]


@pytest.fixture
def run(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained[1], tmp_path / "run", symlinks=True))


def tokenizer_folder(folder: Path, tokens=TOKENS) -> Path:
    save_tokenizer({token: i for i, token in enumerate(tokens)}, folder)
    return folder


def encoder_folder(folder: Path, vocab_size: int = len(TOKENS)) -> Path:
    """A Hugging Face BERT folder (config.json + model.safetensors) with the test tokenizer beside it."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    save_encoder(BertModel(config), folder)
    tokenizer_folder(folder)
    return folder


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def ask_for_code(folder: Path, file: str, auto_class: str) -> None:
    """Make `file` in `folder` ask transformers for custom code, and put the code beside it."""
    (folder / "evil.py").write_text(EVIL_CODE)
    edit_json(folder / file, lambda data: data.update(auto_map={auto_class: "evil.Evil"}))


def train_with(recipe: Path, tmp_path: Path, *overrides: str) -> list:
    return ["train", recipe, f"output_dir={tmp_path / 'out'}", *overrides]


def assert_no_code_ran(folder: Path) -> None:
    assert not (folder / "CODE-RAN").exists(), "code from the folder ran"


# ---------------------------------------------------------------------------------------------
# Folders that ask for custom code


def test_an_encoder_whose_config_asks_for_code(recipe, tmp_path):
    init = encoder_folder(tmp_path / "init")
    ask_for_code(init, "config.json", "AutoModel")
    fails_cleanly(train_with(recipe, tmp_path, f"model.init={init}", f"model.tokenizer={init}"),
                  names=["config.json", "auto_map"], watch=[init])
    assert_no_code_ran(init)


def test_a_tokenizer_whose_config_asks_for_code(recipe, tmp_path):
    folder = tokenizer_folder(tmp_path / "tok")
    ask_for_code(folder, "tokenizer_config.json", "AutoTokenizer")
    fails_cleanly(train_with(recipe, tmp_path, f"model.tokenizer={folder}"),
                  names=["tokenizer_config.json", "auto_map"], watch=[folder])
    assert_no_code_ran(folder)


def test_a_tokenizer_folder_whose_model_config_asks_for_code(recipe, tmp_path):
    folder = tokenizer_folder(tmp_path / "tok")
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "auto_map": {"AutoConfig": "evil.Evil"}}))
    (folder / "evil.py").write_text(EVIL_CODE)
    fails_cleanly(train_with(recipe, tmp_path, f"model.tokenizer={folder}"), names=["config.json", "auto_map"],
                  watch=[folder])
    assert_no_code_ran(folder)


def test_the_encoders_own_tokenizer_asks_for_code(recipe, tmp_path):
    init = encoder_folder(tmp_path / "init")
    ask_for_code(init, "tokenizer_config.json", "AutoTokenizer")
    fails_cleanly(train_with(recipe, tmp_path, f"model.init={init}", "model.tokenizer=null"),
                  names=["tokenizer_config.json", "auto_map"], watch=[init])
    assert_no_code_ran(init)


def test_an_exported_model_whose_tokenizer_asks_for_code(run):
    ask_for_code(run, "tokenizer_config.json", "AutoTokenizer")
    fails_cleanly(["evaluate", run], names=["tokenizer_config.json", "auto_map"], watch=[run])
    assert_no_code_ran(run)


def test_predict_never_takes_a_question_from_its_input(run):
    """Standard input carries predict's sentences: a loader that asked "run this code? [y/N]" would read
    the first sentence as the answer. A folder asking for code is refused before anything is read."""
    ask_for_code(run, "tokenizer_config.json", "AutoTokenizer")
    fails_cleanly(["predict", "--ckpt", run, "--task", "sst"], names=["auto_map"], watch=[run], input="y\ny\ny\n")
    assert_no_code_ran(run)


# ---------------------------------------------------------------------------------------------
# Pickles


class Payload:
    """Unpickled, this would create a file: what any code hidden in a pickle could do instead."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.target),)


def test_pickle_only_weights_that_need_unpickling(recipe, tmp_path):
    init = encoder_folder(tmp_path / "init")
    state = load_file(init / "model.safetensors")
    (init / "model.safetensors").unlink()
    torch.save({**state, "payload": Payload(tmp_path / "PICKLE-RAN")}, init / "pytorch_model.bin")
    fails_cleanly(train_with(recipe, tmp_path, f"model.init={init}", f"model.tokenizer={init}"),
                  names=["pytorch_model.bin", "allow_pickle"], watch=[init])
    assert not (tmp_path / "PICKLE-RAN").exists()


def test_a_resume_folder_of_pickles(recipe, tmp_path):
    folder = tmp_path / "accelerate-state"
    folder.mkdir()
    torch.save({"step": 3, "payload": Payload(tmp_path / "PICKLE-RAN")}, folder / "optimizer.bin")
    fails_cleanly(["train", recipe, f"output_dir={tmp_path / 'out'}", "--resume", folder],
                  names=["optimizer.bin"], watch=[folder])
    assert not (tmp_path / "PICKLE-RAN").exists()


# ---------------------------------------------------------------------------------------------
# A tokenizer that does not match the model


def test_an_encoder_with_fewer_rows_than_the_tokenizer_has_ids(recipe, tmp_path):
    init = encoder_folder(tmp_path / "init", vocab_size=20)
    fails_cleanly(train_with(recipe, tmp_path, f"model.init={init}", f"model.tokenizer={init}"),
                  names=["tokenizer", str(init)], watch=[init])


def test_an_exported_model_given_a_larger_tokenizer(run):
    tokenizer_folder(run, TOKENS + [f"extra{i}" for i in range(200)])
    fails_cleanly(["evaluate", run], names=[str(run), "tokenizer"], watch=[run])


def test_a_tokenizer_folder_without_its_vocabulary(recipe, tmp_path):
    """Without tokenizer.json and vocab.txt, transformers builds a tokenizer of the special tokens alone:
    every word would be [UNK]."""
    folder = tokenizer_folder(tmp_path / "tok")
    for name in ("tokenizer.json", "vocab.txt"):
        (folder / name).unlink(missing_ok=True)
    fails_cleanly(train_with(recipe, tmp_path, f"model.tokenizer={folder}"), names=[str(folder), "[UNK]"],
                  watch=[folder])


def test_an_exported_model_without_its_vocabulary(run):
    for name in ("tokenizer.json", "vocab.txt"):
        (run / name).unlink(missing_ok=True)
    fails_cleanly(["predict", "--ckpt", run, "--task", "sst"], names=[str(run), "[UNK]"], watch=[run],
                  input="the film was good\n")


def test_evaluate_with_an_exported_model_without_its_vocabulary(run):
    for name in ("tokenizer.json", "vocab.txt"):
        (run / name).unlink(missing_ok=True)
    fails_cleanly(["evaluate", run], names=[str(run), "[UNK]"], watch=[run])


def test_export_of_a_model_without_its_vocabulary(run, tmp_path):
    for name in ("tokenizer.json", "vocab.txt"):
        (run / name).unlink(missing_ok=True)
    fails_cleanly(["export", run, "--task", "sst", "--to", tmp_path / "hf"], names=[str(run), "[UNK]"], watch=[run])
    assert not (tmp_path / "hf").exists()


def test_a_tokenizer_file_that_is_not_json(recipe, tmp_path):
    folder = tokenizer_folder(tmp_path / "tok")
    (folder / "vocab.txt").unlink(missing_ok=True)
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    fails_cleanly(train_with(recipe, tmp_path, f"model.tokenizer={folder}"), names=[str(folder)], watch=[folder])


# ---------------------------------------------------------------------------------------------
# Symlink loops


def test_an_encoder_folder_that_is_a_symlink_loop(recipe, tmp_path):
    loop = tmp_path / "init"
    loop.symlink_to("init")
    fails_cleanly(train_with(recipe, tmp_path, f"model.init={loop}", f"model.tokenizer={loop}"),
                  names=[str(loop)], watch=[tmp_path])


def test_a_tokenizer_folder_that_is_a_symlink_loop(recipe, tmp_path):
    loop = tmp_path / "tok"
    loop.symlink_to("tok")
    fails_cleanly(train_with(recipe, tmp_path, f"model.tokenizer={loop}"), names=[str(loop)], watch=[tmp_path])


def test_an_encoder_config_that_is_a_symlink_loop(recipe, tmp_path):
    init = encoder_folder(tmp_path / "init")
    (init / "config.json").unlink()
    (init / "config.json").symlink_to("config.json")
    fails_cleanly(train_with(recipe, tmp_path, f"model.init={init}", f"model.tokenizer={init}"),
                  names=["config.json"], watch=[init])


def test_encoder_weights_that_are_a_symlink_loop(recipe, tmp_path):
    init = encoder_folder(tmp_path / "init")
    (init / "model.safetensors").unlink()
    (init / "model.safetensors").symlink_to("model.safetensors")
    fails_cleanly(train_with(recipe, tmp_path, f"model.init={init}", f"model.tokenizer={init}"),
                  names=["model.safetensors"], watch=[init])


def test_an_encoder_config_whose_sizes_do_not_fit(recipe, tmp_path):
    init = encoder_folder(tmp_path / "init")
    edit_json(init / "config.json", lambda config: config.update(num_attention_heads=5))
    fails_cleanly(train_with(recipe, tmp_path, f"model.init={init}", f"model.tokenizer={init}"),
                  names=["config.json", "num_attention_heads"], watch=[init])
