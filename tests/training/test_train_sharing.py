"""Sharing plans in whole runs: recipe errors, training, the exported checkpoint and its Hugging Face export."""

import json

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mtbert.commands.export import export_hf, save_encoder
from mtbert.commands.validate import validate_recipe
from mtbert.config import dump_recipe, load_recipe
from mtbert.data.loading import load_tokenizer
from mtbert.errors import MtbertError
from mtbert.exported import export_model, load_model
from mtbert.model.bert import BertConfig, BertModel
from mtbert.tasks import resolve_tasks
from mtbert.training.loop import train
from mtbert.training.setup import build_model

from helpers import write_recipe

GROUPED = "EF-S1-I1[quora+sts]+R1[quora+sts]"  # 2 layers: frozen embeddings, shared 0, 1 per group, relational


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory, tokenizer_dir):
    """A 'pretrained' encoder folder in Hugging Face format: the weights every branch must start from."""
    folder = tmp_path_factory.mktemp("init")
    torch.manual_seed(3)
    config = BertConfig(vocab_size=len(load_tokenizer(str(tokenizer_dir))), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    save_encoder(BertModel(config), folder)
    return folder


def recipe_with(tmp_path, tokenizer_dir, sharing, init="random", extra=()):
    path = write_recipe(tmp_path, tokenizer_dir)
    return load_recipe(path, [f"model.sharing={sharing}", f"model.init={init}", *extra])


@pytest.mark.parametrize("sharing,message", [
    ("S3", "command-line override: model.sharing: the layer counts of 'S3' add up to 3, but the encoder has 2"),
    ("S1-I1[quora+ssts]", "did you mean 'sts'"),
    ("{layers: [{range: 0, mode: shared}, {range: 0-1, mode: frozen}]}",
     "command-line override: model.sharing.layers.1.range: layers 0-1 overlap layer 0 \\(model.sharing.layers.0\\)"),
])
def test_bad_plan_on_the_command_line(tmp_path, tokenizer_dir, sharing, message):
    with pytest.raises(MtbertError, match=message):
        recipe_with(tmp_path, tokenizer_dir, sharing)


def test_bad_plan_in_a_file_names_its_line(tmp_path, tokenizer_dir, init_dir):
    path = write_recipe(tmp_path, tokenizer_dir)
    text = path.read_text().replace("  max_length: 32\n", "  max_length: 32\n  sharing:\n    layers:\n"
                                    "    - {range: 0, mode: shared}\n    - {range: 1-2, mode: individual}\n")
    path.write_text(text)
    line = text.splitlines().index("    - {range: 1-2, mode: individual}") + 1
    with pytest.raises(MtbertError, match=rf"recipe.yaml:{line}: model.sharing.layers.1.range: layer 2 is out of "
                                          r"range: the encoder has 2 layers, 0-1"):
        load_recipe(path)
    # A local pretrained folder: its config.json gives the layer count, so the check happens here too.
    with pytest.raises(MtbertError, match="model.sharing: the layer counts of 'S1' add up to 1, but the encoder has 2"):
        load_recipe(path, [f"model.init={init_dir}", "model.sharing=S1"])


def test_training_keeps_frozen_parts_bit_identical_and_individual_branches_apart(tmp_path, tokenizer_dir, init_dir):
    recipe = recipe_with(tmp_path, tokenizer_dir, "F1-I1", init=str(init_dir), extra=["train.max_steps=12"])
    train(recipe)
    initial = load_file(init_dir / "model.safetensors")
    trained = load_file(tmp_path / "ckpt" / "model.safetensors")
    prefix = "encoder.copies.frozen."
    frozen = {k[len(prefix):]: v for k, v in trained.items() if k.startswith(prefix)}
    assert frozen and set(frozen) == {k for k in initial if k.startswith(("embeddings.", "encoder.layer.0."))}
    assert all(torch.equal(v, initial[k]) for k, v in frozen.items())  # bit-identical
    key = "encoder.layer.1.attention.self.query.weight"
    tops = {t: trained[f"encoder.copies.{t}.{key}"] for t in ("sst", "quora", "sts")}
    assert all(not torch.equal(w, initial[key]) for w in tops.values())
    assert not torch.equal(tops["sst"], tops["quora"]) and not torch.equal(tops["quora"], tops["sts"])
    counts = json.loads((tmp_path / "ckpt" / "parameters.json").read_text())
    assert counts["frozen"] == sum(v.numel() for v in frozen.values())
    assert sorted(counts["branches"]) == ["quora", "sst", "sts"]


@pytest.fixture(scope="module")
def grouped_ckpt(tmp_path_factory, tokenizer_dir, init_dir):
    tmp = tmp_path_factory.mktemp("grouped")
    recipe = recipe_with(tmp, tokenizer_dir, GROUPED, init=str(init_dir))
    tokenizer = load_tokenizer(recipe.model.tokenizer)
    torch.manual_seed(0)
    model = build_model(recipe, resolve_tasks(recipe), tokenizer).eval()
    with torch.no_grad():  # every copy different, so a wrong branch cannot pass for the right one
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    export_model(model, tokenizer, tmp / "ckpt", recipe=dump_recipe(recipe), metrics={})
    return model, tmp / "ckpt"


def test_multi_branch_checkpoint_round_trips(grouped_ckpt):
    model, folder = grouped_ckpt
    loaded = load_model(folder)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        stored = json.loads(f.metadata()["mtbert_config"])["sharing"]
    assert stored["text"] == GROUPED and stored["relational"] == [{"tasks": ["quora", "sts"], "layers": 1,
                                                                   "init": "copy_top"}]
    assert loaded.model.config == model.config
    ids = torch.tensor([[2, 7, 8, 3, 0], [2, 9, 3, 0, 0]])
    one = {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}
    outputs = {}
    for task, inputs in (("sst", one), ("quora", one), ("sts", one | {k + "_b": v for k, v in one.items()})):
        outputs[task] = loaded.model(task, inputs)
        assert torch.equal(model(task, inputs), outputs[task])
    sst_branch = loaded.model.encoder_for("sst")(**one).last_hidden_state
    quora_branch = loaded.model.encoder_for("quora")(**one).last_hidden_state
    assert not torch.allclose(sst_branch, quora_branch)


@pytest.mark.parametrize("task,layers", [("sst", 2), ("quora", 3)])
def test_export_of_a_branch_loads_in_transformers(grouped_ckpt, tmp_path, task, layers):
    _, folder = grouped_ckpt
    loaded = load_model(folder)
    target = export_hf(folder, task, tmp_path / "hf")
    hf = transformers.AutoModel.from_pretrained(target).eval()
    assert hf.config.num_hidden_layers == layers  # quora's branch has the relational layer on top
    batch = dict(loaded.tokenizer(["the film was very good", "awful plot"], ["why", "a man runs in the park"],
                                  padding=True, return_tensors="pt"))
    with torch.no_grad():
        ours = loaded.model.encoder_for(task)(**batch)
        theirs = hf(**batch)
    torch.testing.assert_close(theirs.last_hidden_state, ours.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(theirs.pooler_output, ours.pooler_output, atol=1e-5, rtol=0)


def test_checkpoint_saved_before_sharing_plans_still_loads(grouped_ckpt, tmp_path, tokenizer_dir):
    recipe = recipe_with(tmp_path, tokenizer_dir, "shared")
    tokenizer = load_tokenizer(recipe.model.tokenizer)
    model = build_model(recipe, resolve_tasks(recipe), tokenizer).eval()
    export_model(model, tokenizer, tmp_path / "new", recipe=dump_recipe(recipe), metrics={})
    with safe_open(str(tmp_path / "new" / "model.safetensors"), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k.replace("encoder.copies.shared.", "encoder."): f.get_tensor(k) for k in f.keys()}
    config = json.loads(metadata["mtbert_config"])
    config["sharing"] = "shared"  # as stored then
    save_file(tensors, tmp_path / "new" / "model.safetensors", metadata | {"mtbert_config": json.dumps(config)})
    loaded = load_model(tmp_path / "new")
    ids = torch.tensor([[2, 7, 8, 3]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    assert torch.equal(loaded.model("sst", batch), model("sst", batch))


def test_validate_shows_the_resolved_plan(tmp_path, tokenizer_dir):
    summary = validate_recipe(recipe_with(tmp_path, tokenizer_dir, GROUPED))
    assert ("sharing: embeddings frozen | layers 0 shared, 1 individual [sst] [quora+sts] | relational 1 layer(s) "
            "[quora+sts] (copy_top)") in summary.splitlines()
