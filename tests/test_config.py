import dataclasses
import json
import types
import typing

import pytest

from mtbert.config import RANGES, HeadConfig, Range, Recipe, StageConfig, dump_recipe, load_recipe, parse_recipe
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



# ---------------------------------------------------------------------------------------------
# Ranges: every numeric field has one, and each refuses a value just outside it, naming the key


def _options(tp):
    """What a hint allows: Optional and other unions unwrapped."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(tp) for t in _options(a)]
    return [tp]


def _scalar_types(tp):
    """The item types a hint allows, list items included."""
    return {typing.get_args(t)[0] if typing.get_origin(t) is list else t for t in _options(tp)}


def _sections(tp=Recipe, prefix=()):
    """(dataclass, key path) for every section of a recipe, reached as an override reaches it."""
    for option in _options(tp):
        if typing.get_origin(option) is list:
            yield from _sections(typing.get_args(option)[0], prefix + ("0",))
        elif typing.get_origin(option) is dict:
            yield from _sections(typing.get_args(option)[1], prefix + ("sst",))
        elif dataclasses.is_dataclass(option):
            yield option, prefix
            hints = typing.get_type_hints(option)
            for f in dataclasses.fields(option):
                yield from _sections(hints[f.name], prefix + (f.name,))


def _numeric_fields(cls):
    """(name, is a list) of every int or float field."""
    hints = typing.get_type_hints(cls)
    return [(f.name, any(typing.get_origin(t) is list for t in _options(hints[f.name])))
            for f in dataclasses.fields(cls) if _scalar_types(hints[f.name]) & {int, float}]


def test_every_numeric_field_of_every_section_has_a_range():
    sections = {cls for cls, _ in _sections()}
    assert len(sections) >= 15 and HeadConfig in sections and StageConfig in sections  # nested ones reached
    missing = [f"{cls.__name__}.{name}" for cls in sections for name, _ in _numeric_fields(cls)
               if name not in RANGES.get(cls, {})]
    assert not missing, f"numeric fields without a declared range (add them to @ranges): {missing}"
    for cls, bounds in RANGES.items():
        assert set(bounds) <= {name for name, _ in _numeric_fields(cls)}, cls
        defaults = cls.__new__(cls)  # each field's default, without the required ones
        for f in dataclasses.fields(cls):
            if f.name in bounds and f.default_factory is not dataclasses.MISSING:
                setattr(defaults, f.name, f.default_factory())
            elif f.name in bounds:
                setattr(defaults, f.name, f.default)
        for name, bound in bounds.items():
            value = getattr(defaults, name)
            for item in value if isinstance(value, list) else [value]:
                assert item is None or item in bound, f"{cls.__name__}.{name}: default {item} is not {bound}"


def test_range_messages():
    assert str(Range(1)) == "at least 1" and str(Range(0, low_open=True)) == "above 0"
    assert str(Range(0, 1, high_open=True)) == "in [0, 1)" and str(Range(0, 2**32 - 1)) == "in [0, 4294967295]"
    assert 0 in Range(0) and 0 not in Range(0, low_open=True) and 1 not in Range(0, 1, high_open=True)
    assert 1 in Range(0, 1) and str(Range()) == "a finite number"


def _outside(bound):
    """Values just outside a range (nan for one that only asks for a finite number)."""
    values = []
    if bound.low is not None:
        values.append(bound.low if bound.low_open else bound.low - 1)
    if bound.high is not None:
        values.append(bound.high if bound.high_open else bound.high + 1)
    return values or [float("nan")]


def _out_of_range_overrides():
    seen = set()
    for cls, prefix in _sections():
        for name, is_list in _numeric_fields(cls):
            if (cls, name) not in seen and name in RANGES.get(cls, {}):  # a missing range: the test above
                seen.add((cls, name))
                for value in _outside(RANGES[cls][name]):
                    yield ".".join(prefix + (name,)), [value, value] if is_list else value


# Every section present, so that an override can reach each one: stages.0, model.sharing.relational.0, ...
EVERY_SECTION = RECIPE.replace("  tokenizer: tok\n", "  tokenizer: tok\n  sharing:\n    layers: [{range: all, mode: "
                               "shared}]\n    relational: [{tasks: [sst], layers: 1}]\n") + "stages:\n- {}\n"


@pytest.mark.parametrize("key,value", list(_out_of_range_overrides()))
def test_each_range_refuses_a_value_just_outside_it(tmp_path, key, value):
    path = write(tmp_path, EVERY_SECTION)
    assert load_recipe(path).stages  # valid as it is
    with pytest.raises(MtbertError) as error:
        load_recipe(path, [f"{key}={json.dumps(value).replace('NaN', '.nan')}"])
    message = str(error.value)
    assert message.startswith("command-line override: " + key) and ("must be" in message or "finite" in message)


def test_a_range_error_in_the_file_names_its_line(tmp_path):
    path = write(tmp_path, RECIPE + "  betas: [0.9, 1.0]\nsampling: {anneal_decay: 1.5}\n")
    with pytest.raises(MtbertError, match=r"^.*r.yaml:10: train.betas.1: must be in \[0, 1\), got 1.0$"):
        load_recipe(path)
    path = write(tmp_path, RECIPE.replace("  sst: {}", "  sst: {max_train_examples: 0}"))
    with pytest.raises(MtbertError, match=r"r.yaml:6: tasks.sst.max_train_examples: must be at least 1, got 0"):
        load_recipe(path)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan", "inf"])
def test_no_float_may_be_nan_or_infinite(tmp_path, value):
    for key in ("train.lr", "tasks.sst.loss_weight", "contrastive.positive_min", "tasks.sst.label_range"):
        text = f"[0, {value}]" if key.endswith("label_range") else value
        with pytest.raises(MtbertError, match=f"{key}.*expected a finite number"):
            load_recipe(write(tmp_path), [f"{key}={text}"])


def test_fields_that_span_keys(tmp_path):
    with pytest.raises(MtbertError, match="max_position_embeddings: 16 positions cannot hold inputs of "
                                          "model.max_length 32"):
        load_recipe(write(tmp_path), ["model.size.max_position_embeddings=16", "model.max_length=32"])
    assert load_recipe(write(tmp_path), ["model.size.max_position_embeddings=32", "model.max_length=32"])
    for bad in ("[5, 0]", "[1, 1]", "[0, 1, 2]"):
        with pytest.raises(MtbertError, match=r"tasks.sst.label_range: expected \[low, high\] with low < high"):
            load_recipe(write(tmp_path), [f"tasks.sst.label_range={bad}"])
    with pytest.raises(MtbertError, match="model.size.num_heads: 3 does not divide hidden_size"):
        load_recipe(write(tmp_path), ["model.size.num_heads=3"])


# ---------------------------------------------------------------------------------------------
# Reading the file and the overrides


def test_bom_anchors_aliases_and_merge_keys_still_load(tmp_path):
    text = RECIPE.replace("  sst: {}\n", "  sst: &task {batch_size: 8, head: &head {type: mlp, layers: 2}}\n"
                                         "  sts: {<<: *task, batch_size: 4}\n  quora: {head: *head}\n")
    path = tmp_path / "r.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    recipe = load_recipe(path)
    assert recipe.tasks["sst"].batch_size == 8 and recipe.tasks["sts"].batch_size == 4
    assert recipe.tasks["sts"].head.layers == 2 and recipe.tasks["quora"].head.type == "mlp"


def test_a_duplicate_key_names_both_lines(tmp_path):
    path = write(tmp_path, RECIPE.replace("  sst: {}\n", "  sst: {}\n  sst: {batch_size: 8}\n"))
    with pytest.raises(MtbertError, match=r"r.yaml:7: key 'sst' appears twice in one mapping \(first on line 6\)"):
        load_recipe(path)


def test_billion_laughs_fails_in_milliseconds(tmp_path):
    import time

    laughs = "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
    started = time.perf_counter()
    with pytest.raises(MtbertError, match=r"r.yaml:\d+: its aliases expand to more than 100,000 values"):
        load_recipe(write(tmp_path, RECIPE + laughs))
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("content,message", [
    (b"name: caf\xe9\n", r"r.yaml:1: not UTF-8 text: byte 0xe9 at offset 9"),
    (b"\x89PNG\r\n\x1a\n\x00", r"r.yaml:1: not UTF-8 text: byte 0x89 at offset 0"),
])
def test_a_file_that_is_not_utf8_names_the_offset(tmp_path, content, message):
    path = tmp_path / "r.yaml"
    path.write_bytes(content)
    with pytest.raises(MtbertError, match=message):
        load_recipe(path)


def test_a_recipe_path_that_cannot_be_read(tmp_path, monkeypatch):
    with pytest.raises(MtbertError, match="r.yaml: the recipe file is a folder, not a file"):
        load_recipe((tmp_path / "r.yaml").mkdir() or tmp_path / "r.yaml")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    path = write(tmp_path / "readable") if (tmp_path / "readable").mkdir() is None else None
    monkeypatch.setattr("mtbert.textfiles.open", refuse, raising=False)
    with pytest.raises(MtbertError, match=r"r.yaml: cannot read the recipe file \(Permission denied\)"):
        load_recipe(path)


@pytest.mark.parametrize("override,message", [
    ("train..lr=1", "override 'train..lr=1': the key 'train..lr' has an empty part"),
    (".lr=1", "override '.lr=1': the key '.lr' has an empty part"),
    ("train.=1", "override 'train.=1': the key 'train.' has an empty part"),
    ("=1", "override '=1': expected key=value"),
    ("train.lr", "override 'train.lr': expected key=value"),
    ("stages.2.lr=1", "override 'stages.2.lr=1': the recipe has no 'stages' list"),
    ("train.lr.x=1", "override 'train.lr.x=1': 'lr' is not a section"),
    ("tasks={sst: {}, sst: {}}", "override 'tasks={sst: {}, sst: {}}': key 'sst' appears twice"),
    ("name=caf\udce9", r"override 'name=caf\\udce9': not UTF-8 text \(character 8\)"),
])
def test_a_malformed_override_names_itself(tmp_path, override, message):
    with pytest.raises(MtbertError, match="^" + message):
        load_recipe(write(tmp_path), [override])


def test_an_override_value_that_is_not_yaml_is_a_string(tmp_path):
    assert load_recipe(write(tmp_path), ["name=a: b: c"]).name == "a: b: c"
    assert load_recipe(write(tmp_path), ["output_dir=[x"]).output_dir == "[x"


# ---------------------------------------------------------------------------------------------
# Streamed tasks (tasks.*.streaming): what a stream of unknown length cannot do is refused in one line

@pytest.mark.parametrize("overrides,message", [
    (["tasks.sst.streaming=true"], "train.max_steps: an epoch of streamed task sst has no known length"),
    (["tasks.sst.streaming=true", "train.max_steps=5", "sampling.strategy=proportional"],
     "sampling.strategy: proportional needs each task's size, which streamed task sst has not"),
    (["tasks.sst.streaming=true", "train.max_steps=5", "tasks.sst.class_balanced=true"],
     "tasks.sst.class_balanced: needs the task's examples in memory"),
    (["tasks.sst.streaming=true", "train.max_steps=5", "tasks.sst.max_train_examples=10"],
     "tasks.sst.max_train_examples: needs the task's examples in memory"),
])
def test_a_streamed_task_refuses_what_needs_its_length(tmp_path, overrides, message):
    with pytest.raises(MtbertError) as error:
        load_recipe(write(tmp_path), overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_streamed_task_in_a_stage_needs_that_stages_length(tmp_path):
    text = RECIPE + "stages:\n  - {tasks: [sst], max_steps: 4}\n  - {tasks: [sst], epochs: 1}\n"
    with pytest.raises(MtbertError, match=r"stages\.1\.max_steps: an epoch of streamed task sst"):
        load_recipe(write(tmp_path, text), ["tasks.sst.streaming=true"])
    assert load_recipe(write(tmp_path), ["tasks.sst.streaming=true", "train.max_steps=5"]).tasks["sst"].streaming
