import pytest

from mtbert.config import dump_recipe, load_recipe, parse_recipe
from mtbert.errors import MtbertError

RECIPE = """\
name: t
model:
  init: random
  tokenizer: tok
tasks:
  sst: {}
train:
  lr: 3.0e-5
  batch_size: 16
"""


def write(tmp_path, text=RECIPE):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_loads_types_and_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path))
    assert recipe.train.lr == 3e-5 and recipe.train.batch_size == 16
    assert recipe.train.epochs == 1 and recipe.sampling.strategy == "round_robin"
    assert list(recipe.tasks) == ["sst"]


def test_override_is_type_checked(tmp_path):
    recipe = load_recipe(write(tmp_path), ["train.lr=1e-4", "tasks.sst.batch_size=8", "sampling.strategy=uniform"])
    assert recipe.train.lr == 1e-4 and recipe.tasks["sst"].batch_size == 8
    assert recipe.sampling.strategy == "uniform"
    with pytest.raises(MtbertError, match="train.batch_size: expected an integer"):
        load_recipe(write(tmp_path), ["train.batch_size=big"])


def test_unknown_key_names_line_and_nearest(tmp_path):
    path = write(tmp_path, RECIPE.replace("  lr: 3.0e-5", "  lrr: 3.0e-5"))
    with pytest.raises(MtbertError) as e:
        load_recipe(path)
    assert "r.yaml:8" in str(e.value) and "'train.lrr'" in str(e.value) and "did you mean 'lr'" in str(e.value)


def test_unknown_override_key_suggests(tmp_path):
    with pytest.raises(MtbertError, match="^command-line override: unknown key 'train.warmup_ratoi'; did you "
                                          "mean 'warmup_ratio'"):
        load_recipe(write(tmp_path), ["train.warmup_ratoi=0.2"])
    with pytest.raises(MtbertError, match="did you mean 'lr'"):
        load_recipe(write(tmp_path), ["train.learning_rate=0.2"])


def test_wrong_type_names_line(tmp_path):
    path = write(tmp_path, RECIPE.replace("batch_size: 16", "batch_size: [1, 2]"))
    with pytest.raises(MtbertError, match=r"r.yaml:9: train.batch_size: expected an integer"):
        load_recipe(path)


def test_bad_literal_suggests(tmp_path):
    with pytest.raises(MtbertError, match="did you mean 'proportional'"):
        load_recipe(write(tmp_path), ["sampling.strategy=proportionnal"])


def test_semantic_checks(tmp_path):
    with pytest.raises(MtbertError, match="warmup_ratio"):
        load_recipe(write(tmp_path), ["train.warmup_ratio=1.5"])
    with pytest.raises(MtbertError, match="names no task"):
        load_recipe(write(tmp_path, RECIPE.replace("  sst: {}\n", "")))
    with pytest.raises(MtbertError, match="tokenizer"):
        load_recipe(write(tmp_path, RECIPE.replace("  tokenizer: tok\n", "")))


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(MtbertError, match="not valid YAML"):
        load_recipe(write(tmp_path, "tasks: [\n"))
    with pytest.raises(MtbertError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_data_dir_precedence(tmp_path, monkeypatch):
    path = write(tmp_path, RECIPE + "data_dir: from_recipe\n")
    assert load_recipe(path).data_dir == "from_recipe"
    monkeypatch.setenv("MTBERT_DATA_DIR", "from_env")
    assert load_recipe(path).data_dir == "from_env"
    assert load_recipe(path, data_dir="from_cli").data_dir == "from_cli"


def test_dump_round_trips(tmp_path):
    import yaml

    recipe = load_recipe(write(tmp_path), ["tasks.sst.head.type=mlp"])
    assert parse_recipe(yaml.safe_load(dump_recipe(recipe))) == recipe


def test_every_shipped_recipe_loads():
    from pathlib import Path

    from mtbert.tasks import resolve_tasks

    recipes = sorted(Path(__file__).parent.parent.joinpath("recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and "mtbert" in first, f"{path} must open with the command that runs it"
        resolve_tasks(load_recipe(path))
