"""`mtbert export` of a task with an adapter: a LoRA task as a peft adapter folder beside its base, which
`peft.PeftModel.from_pretrained(transformers.AutoModel.from_pretrained(...), ...)` loads with mtbert's outputs;
`--merge` as one plain model; a PALs task refused."""

import json

import pytest
import torch
import transformers
from peft import PeftModel
from typer.testing import CliRunner

from mtbert.cli import app
from mtbert.commands.export import EXPORT_MARKER, export_hf
from mtbert.config import dump_recipe, load_recipe
from mtbert.data.loading import load_tokenizer
from mtbert.errors import MtbertError
from mtbert.exported import export_model, load_model
from mtbert.model.adapters import adapter_parameters
from mtbert.objectives.supervised import predictions
from mtbert.tasks import resolve_tasks
from mtbert.training.setup import build_model

from helpers import write_recipe

SENTENCES = ["the film was very good", "awful plot", "a dull story , not moving", "what"]
SECOND = ["the movie is great", "why", "the actor plays guitar on stage", "a man runs in the park"]
# quora and sts share one adapter; sst (classes, cls pooler, linear head) has its own, on a frozen bottom layer
# and a shared top layer (whose pooler BertForSequenceClassification reads).
LORA = "F1-S1+lora[r=4,alpha=8,targets=all,quora+sts]"


def checkpoint(root, tokenizer_dir, plan):
    recipe = load_recipe(write_recipe(root, tokenizer_dir), [f"model.sharing={plan}"])
    tokenizer = load_tokenizer(recipe.model.tokenizer)
    torch.manual_seed(0)
    model = build_model(recipe, resolve_tasks(recipe), tokenizer).eval()
    with torch.no_grad():  # trained-looking weights: adapters and heads away from their zero starts
        for params in adapter_parameters(model.encoder, model.config.sharing).values():
            for p in params:
                p.add_(torch.randn_like(p) * 0.3)
        for p in model.heads.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    export_model(model, tokenizer, root / "ckpt", recipe=dump_recipe(recipe), metrics={})
    return root / "ckpt"


@pytest.fixture(scope="module")
def lora(tmp_path_factory, tokenizer_dir):
    return checkpoint(tmp_path_factory.mktemp("export_lora"), tokenizer_dir, LORA)


def encode(tokenizer, pair: bool) -> dict[str, torch.Tensor]:
    batch = tokenizer(*((SENTENCES, SECOND) if pair else (SENTENCES,)), padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()
    return dict(batch)


@pytest.mark.parametrize("task", ["sst", "quora"])
def test_adapter_folder_loads_through_peft_with_mtbert_outputs(lora, tmp_path, task):
    loaded = load_model(lora)
    folder = export_hf(lora, task, tmp_path / "hf")
    assert {p.name for p in folder.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "base",
                                                   EXPORT_MARKER}
    base = transformers.AutoModel.from_pretrained(folder / "base")
    model = PeftModel.from_pretrained(base, folder).eval()
    batch = encode(transformers.AutoTokenizer.from_pretrained(folder / "base"), pair=task == "quora")
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        ours = loaded.model.encoder(task, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        theirs = model(**batch)
        with model.disable_adapter():
            plain = model(**batch)
    torch.testing.assert_close(theirs.last_hidden_state[real], ours.last_hidden_state[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(theirs.pooler_output, ours.pooler_output, atol=1e-5, rtol=0)
    # The comparison means something: without the adapter the outputs are another model's.
    assert (plain.last_hidden_state[real] - theirs.last_hidden_state[real]).abs().max() > 1e-2
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8.0)
    assert len(config["target_modules"]) == 2 * 6  # both layers, all six projections


def test_merge_writes_one_plain_model_with_the_adapter_folded_in(lora, tmp_path):
    loaded = load_model(lora)
    folder = export_hf(lora, "quora", tmp_path / "merged", merge=True)
    assert not (folder / "adapter_config.json").exists() and not (folder / "base").exists()
    merged = transformers.AutoModel.from_pretrained(folder).eval()
    assert not any("lora" in key for key in merged.state_dict())
    batch = encode(loaded.tokenizer, pair=True)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        ours = loaded.model.encoder("quora", batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        theirs = merged(**batch)
    # W + s B A is rounded once into W: equal to float rounding (1.1e-5 seen with these large adapters)
    torch.testing.assert_close(theirs.last_hidden_state[real], ours.last_hidden_state[real], atol=5e-5, rtol=0)


@pytest.mark.parametrize("merge", [False, True])
def test_with_head_gives_mtbert_predictions(lora, tmp_path, merge):
    loaded = load_model(lora)
    folder = export_hf(lora, "sst", tmp_path / "sst", with_head=True, merge=merge)
    base = transformers.AutoModelForSequenceClassification.from_pretrained(folder if merge else folder / "base")
    model = (base if merge else PeftModel.from_pretrained(base, folder)).eval()
    batch = encode(loaded.tokenizer, pair=False)
    with torch.no_grad():
        prediction, probs = predictions("classes", loaded.model("sst", batch))
        logits = model(**batch).logits
    assert torch.equal(logits.argmax(-1), prediction) and len(set(prediction.tolist())) > 1
    torch.testing.assert_close(logits.softmax(-1), probs, atol=1e-5, rtol=0)


def test_pals_and_merge_without_an_adapter_are_refused(tmp_path, tokenizer_dir):
    pals = checkpoint(tmp_path / "pals", tokenizer_dir, "frozen+pals")
    with pytest.raises(MtbertError, match="projected attention layers \\(PALs\\), which neither transformers nor peft"):
        export_hf(pals, "sst", tmp_path / "hf")
    plain = checkpoint(tmp_path / "plain", tokenizer_dir, "frozen")
    with pytest.raises(MtbertError, match="--merge folds a task's LoRA adapter .* has no adapter"):
        export_hf(plain, "sst", tmp_path / "hf", merge=True)
    assert not (tmp_path / "hf").exists()
    result = CliRunner().invoke(app, ["export", str(pals), "--task", "sts", "--to", str(tmp_path / "hf")])
    assert result.exit_code == 2 and "error: task 'sts' runs through projected attention layers" in result.output
