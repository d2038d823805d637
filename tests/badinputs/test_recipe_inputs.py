"""Bad recipes, overrides, sharing plans and sweep plan files: each is refused when the recipe loads, in one
line naming the file and line, the key or the override, before anything reads data or trains."""

from __future__ import annotations

import contextlib
import signal
import time

import pytest
import yaml

from badinput import fails_cleanly

BASE = """\
# mtbert validate bad.yaml
name: bad
model:
  init: random
  tokenizer: tok
  max_length: 32
  size: {hidden_size: 32, num_layers: 2, num_heads: 2, intermediate_size: 64}
tasks:
  sst: {}
train:
  lr: 3.0e-5
"""

# Nine levels of nine aliases: 9**9 (387 million) strings once expanded, 200 bytes on disk.
LAUGHS = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
BILLION_LAUGHS = "l0: &l0 lol\n" + LAUGHS
FLOW_LAUGHS = "[&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol], " + ", ".join(
    f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)) + "]"


@contextlib.contextmanager
def within(seconds: float):
    """Fail (instead of hanging the suite) when the block runs longer than `seconds`, and time it."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.perf_counter()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.perf_counter() - started < seconds


def recipe(tmp_path, content: str | bytes, name: str = "bad.yaml"):
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


# ---------------------------------------------------------------------------------------------
# The file itself: its bytes, its YAML


FILES = {
    "yaml_syntax": (BASE + "eval: [1, 2\n", ["bad.yaml:13", "not valid YAML"]),
    "tab_indent": (BASE + "eval:\n\tbatch_size: 4\n", ["bad.yaml:13"]),
    "duplicate_task": (BASE.replace("  sst: {}\n", "  sst: {}\n  sts: {}\n  sst: {batch_size: 8}\n"),
                       ["bad.yaml:11", "line 9", "'sst'"]),
    "duplicate_train_key": (BASE + "  lr: 1.0e-3\n", ["bad.yaml:12", "line 11", "'lr'"]),
    "duplicate_section": (BASE + "train:\n  epochs: 2\n", ["bad.yaml:12", "line 10", "'train'"]),
    "alias_cycle": (BASE + "stages: &s [*s]\n", ["bad.yaml:12", "itself"]),
    "deep_nesting": (BASE + "stages: " + "[" * 5000 + "]" * 5000 + "\n", ["bad.yaml", "nested"]),
    "binary_png": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), ["bad.yaml", "offset 0"]),
    "latin1_comment": (BASE.replace("# mtbert", "# caf\xe9 mtbert").encode("latin-1"), ["bad.yaml", "offset 5"]),
    "utf16": (BASE.encode("utf-16"), ["bad.yaml", "offset 0"]),
    "nul_byte": (BASE + "name: a\x00b\n", ["bad.yaml:12"]),
    "not_a_mapping": ("- sst\n- sts\n", ["bad.yaml", "mapping"]),
    "empty": ("", ["bad.yaml", "tasks"]),
}


@pytest.mark.parametrize("case", FILES)
def test_a_damaged_recipe_file(tmp_path, case):
    content, names = FILES[case]
    fails_cleanly(["validate", recipe(tmp_path, content)], names=names, watch=[tmp_path])


def test_billion_laughs_fails_fast(tmp_path):
    path = recipe(tmp_path, BASE + BILLION_LAUGHS)
    with within(1.0):
        fails_cleanly(["validate", path], names=["bad.yaml"], watch=[tmp_path])


def test_billion_laughs_inside_a_real_key_fails_fast(tmp_path):
    path = recipe(tmp_path, BASE.replace("  sst: {}\n", "  sst:\n    label_names: " + FLOW_LAUGHS + "\n"))
    with within(1.0):
        fails_cleanly(["validate", path], names=["bad.yaml:10"], watch=[tmp_path])


@pytest.mark.parametrize("where", ["directory", "missing"])
def test_a_recipe_path_that_is_not_a_file(tmp_path, where):
    path = tmp_path / "bad.yaml"
    if where == "directory":
        path.mkdir()
    fails_cleanly(["train", path], names=["bad.yaml"], watch=[tmp_path])


# ---------------------------------------------------------------------------------------------
# Values out of range or of the wrong type, each named by its key


def with_value(dotted: str, value) -> str:
    data = yaml.safe_load(BASE)
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return "# mtbert validate bad.yaml\n" + yaml.safe_dump(data, sort_keys=False)


VALUES = {
    "seed": -1, "train.betas": [0.9, 1.0], "train.eps": 0.0, "model.dropout": 1.0, "tasks.sst.head.dropout": -0.1,
    "train.batch_size": 0, "train.max_steps": -5, "eval.max_examples": 0, "eval.every_steps": -1,
    "tasks.sst.max_train_examples": 0, "train.lr": float("nan"), "tasks.sst.loss_weight": float("inf"),
    "train.weight_decay": -0.01, "train.grad_clip": 0.0, "sampling.anneal_decay": 1.5, "tasks.sst.head.layers": 0,
    "tasks.sst.head.hidden_size": 0, "model.size.max_position_embeddings": 16, "model.size.num_heads": 0,
    "contrastive.scale": 0.0, "contrastive.margin": -1.0, "tasks.sst.num_labels": 1, "tasks.sst.batch_size": 0,
    "train.epochs": 1.5, "train.warmup_ratio": "fast", "trian": {"lr": 1.0},
    "tasks.sst.eval_every": -1, "data.stream_buffer": 0, "tasks.sst.streaming": "yes",
}


@pytest.mark.parametrize("key", VALUES)
def test_a_value_out_of_range_or_of_the_wrong_type(tmp_path, key):
    path = recipe(tmp_path, with_value(key, VALUES[key]))
    fails_cleanly(["validate", path], names=["bad.yaml:", key], watch=[tmp_path])


def test_seed_beyond_what_numpy_takes(tmp_path):
    fails_cleanly(["validate", recipe(tmp_path, with_value("seed", 2**32))], names=["bad.yaml:", "seed", "4294967295"],
                  watch=[tmp_path])


def test_label_range_upside_down(tmp_path):
    path = recipe(tmp_path, with_value("tasks.sts", {"label_range": [5.0, 0.0]}))
    fails_cleanly(["validate", path], names=["bad.yaml:", "tasks.sts.label_range"], watch=[tmp_path])


# ---------------------------------------------------------------------------------------------
# Overrides: each names the override as typed


OVERRIDES = {
    "train..lr=1": ["'train..lr=1'", "empty"], ".lr=1": ["'.lr=1'", "empty"], "train.=1": ["'train.=1'", "empty"],
    "train.lr": ["'train.lr'", "key=value"], "train.lrr=1": ["override", "'train.lrr'", "did you mean 'lr'"],
    "stages.3.lr=1": ["'stages.3.lr=1'"], "train.lr=.nan": ["override", "train.lr", "finite"],
    "train.batch_size=0": ["override", "train.batch_size", "at least 1"],
    "tasks={sst: {}, sst: {batch_size: 2}}": ["'sst'", "twice"],
    "train.lr.x=1": ["'train.lr.x=1'", "not a section"],
    "name=caf\udce9": ["name=caf", "UTF-8"],
}


@pytest.mark.parametrize("override", OVERRIDES)
def test_a_bad_override(tmp_path, override):
    fails_cleanly(["validate", recipe(tmp_path, BASE), override], names=OVERRIDES[override], watch=[tmp_path])


def test_billion_laughs_in_an_override_fails_fast(tmp_path):
    path = recipe(tmp_path, BASE)
    with within(1.0):
        fails_cleanly(["validate", path, "tasks.sst.label_names=" + FLOW_LAUGHS], names=["tasks.sst.label_names"],
                      watch=[tmp_path])


def test_an_empty_data_dir_option(tmp_path):
    fails_cleanly(["validate", recipe(tmp_path, BASE), "--data-dir", ""], names=["--data-dir"], watch=[tmp_path])


# ---------------------------------------------------------------------------------------------
# Sharing plans


PLANS = {
    "S9": ["model.sharing", "S9"], "X2": ["model.sharing", "X2"], "I2[sst+nope]": ["model.sharing", "nope"],
    "{layers: [{range: 0-1, mode: shared}], relational: [{tasks: [sst], layers: 0}]}":
        ["model.sharing.relational.0.layers"],
    "{layers: [{range: 0-1, mode: shared}, {range: 1, mode: frozen}]}": ["model.sharing.layers"],
}


@pytest.mark.parametrize("plan", PLANS)
def test_a_bad_sharing_plan(tmp_path, plan):
    fails_cleanly(["validate", recipe(tmp_path, BASE), f"model.sharing={plan}"], names=PLANS[plan],
                  watch=[tmp_path])


# ---------------------------------------------------------------------------------------------
# Plan files and grids of `mtbert sweep`


PLAN_FILES = {
    "latin1": ("- shared\n- S1-I1  # caf\xe9\n".encode("latin-1"), ["plans.yaml", "offset 23"]),
    "binary": (b"\x1f\x8b\x08\x00" + bytes(range(256)), ["plans.yaml", "offset 1"]),
    "duplicate_name": ("a: shared\nb: frozen\na: S1-I1\n", ["plans.yaml:3", "line 1", "'a'"]),
    "repeated_plan": ("- shared\n- frozen\n- shared\n", ["plans.yaml", "'shared'", "twice"]),
    "laughs": (BILLION_LAUGHS, ["plans.yaml"]),
    "scalar": ("shared\n", ["plans.yaml", "expected a list"]),
    "empty": ("", ["plans.yaml", "expected a list"]),
    "unknown_plan": ("- shared\n- Z9\n", ["Z9"]),
    "bad_mapping": ("grouped: {layers: [{range: all, mode: sharde}]}\n", ["grouped", "sharde"]),
}


@pytest.mark.parametrize("case", PLAN_FILES)
def test_a_bad_plan_file(tmp_path, case):
    content, names = PLAN_FILES[case]
    plans = recipe(tmp_path, content, "plans.yaml")
    with within(5.0):
        fails_cleanly(["sweep", recipe(tmp_path, BASE), "--plans", plans, "--output", tmp_path / "sweep"],
                      names=names, watch=[tmp_path])
    assert not (tmp_path / "sweep").exists()


def test_a_plan_file_that_is_a_directory(tmp_path):
    (tmp_path / "plans.yaml").mkdir()
    fails_cleanly(["sweep", recipe(tmp_path, BASE), "--plans", tmp_path / "plans.yaml", "--output", tmp_path / "s"],
                  names=["plans.yaml"], watch=[tmp_path])


@pytest.mark.parametrize("content,extra,names", [
    ("- shared\n", [], ["variants.yaml", "expected a mapping"]),
    ("a: {model.sharing: Z9}\n", [], ["variant=a", "Z9"]),
    ("a: {train.lr: 1}\n", ["--grid", "train.lr=1e-4"], ["variant", "train.lr", "twice"])])
def test_a_bad_variants_file(tmp_path, content, extra, names):
    variants = recipe(tmp_path, content, "variants.yaml")
    fails_cleanly(["sweep", recipe(tmp_path, BASE), "--variants", variants, *extra, "--output", tmp_path / "s"],
                  names=names, watch=[tmp_path])
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("grid,names", [("train..lr=1,2", ["train..lr"]), ("train.lr=1e-3,,2e-3", ["empty value"]),
                                        ("train.lr=0,1e-3", ["train.lr", "must be"]),
                                        ("model.sharing", ["--grid", "key=value"])])
def test_a_bad_grid(tmp_path, grid, names):
    fails_cleanly(["sweep", recipe(tmp_path, BASE), "--grid", grid, "--output", tmp_path / "s"], names=names,
                  watch=[tmp_path])
    assert not (tmp_path / "s").exists()
