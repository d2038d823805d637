"""`mtbert sweep`: the grid, the runs in child processes, restarts, failures, tables and plot."""

import csv
import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtbert.cli import app
from mtbert.commands import sweep
from mtbert.commands.sweep import Axis, combinations, load_plans, parse_grid, run_sweep, split_values, write_tables
from mtbert.errors import MtbertError

from helpers import write_recipe

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_grid_values_split_outside_brackets():
    assert split_values("shared, S4-I2[quora+sts,sst],{layers: [{range: all, mode: frozen}]}") == [
        "shared", "S4-I2[quora+sts,sst]", "{layers: [{range: all, mode: frozen}]}"]
    axis = parse_grid("model.sharing=shared,S1-I1[quora+sts]")
    assert axis.key == "model.sharing" and [v for _, v in axis.values] == ["shared", "S1-I1[quora+sts]"]
    for bad, message in (("model.sharing", "expected key=value1,value2"), ("=a,b", "expected key"),
                         ("train.lr=1e-3,,2e-3", "an empty value"), ("train.lr=1,1", "listed twice")):
        with pytest.raises(MtbertError, match=message):
            parse_grid(bad)


def test_combinations_and_their_folders():
    combos = combinations([parse_grid("model.sharing=shared,S1-I1[quora+sts]"), parse_grid("train.lr=1e-3,2e-3")])
    assert [c.overrides for c in combos][1] == ["model.sharing=shared", "train.lr=2e-3"]
    assert combos[2].title == "sharing=S1-I1[quora+sts] lr=1e-3"
    folders = [c.folder for c in combos]
    assert len(set(folders)) == 4 and all("/" not in f and "[" not in f for f in folders)
    with pytest.raises(MtbertError, match="model.sharing is varied twice"):
        combinations([parse_grid("model.sharing=shared"), parse_grid("model.sharing=frozen")])


def test_plans_file(tmp_path):
    (tmp_path / "list.yaml").write_text("- shared\n- S1-I1[quora+sts]\n")
    assert load_plans(tmp_path / "list.yaml").values == [("shared", "shared"), ("S1-I1[quora+sts]", "S1-I1[quora+sts]")]
    (tmp_path / "named.yaml").write_text("all shared: shared\ngrouped:\n  layers:\n  - {range: all, mode: individual, "
                                         "groups: [[quora, sts]]}\n")
    axis = load_plans(tmp_path / "named.yaml")
    assert axis.key == "model.sharing" and axis.values[0] == ("all shared", "shared")
    assert json.loads(axis.values[1][1]) == {"layers": [{"range": "all", "mode": "individual",
                                                         "groups": [["quora", "sts"]]}]}
    (tmp_path / "bad.yaml").write_text("plans: 3\n")
    with pytest.raises(MtbertError, match="bad.yaml: expected a list of short plans"):
        load_plans(tmp_path / "bad.yaml")
    with pytest.raises(MtbertError, match="^--plans .*absent.yaml: plan file not found"):
        load_plans(tmp_path / "absent.yaml")


@pytest.mark.parametrize("content,message", [
    ("- shared\n- S1-I1\n- shared\n", "plans.yaml: the plan 'shared' is listed twice"),
    ("a: shared\nb: frozen\na: S1-I1\n", r"plans.yaml:3: key 'a' appears twice in one mapping \(first on line 1\)"),
    ("- shared\n- S1-I1 # caf\xe9\n".encode("latin-1"), r"plans.yaml:2: not UTF-8 text: byte 0xe9 at offset 22"),
    ("l0: &l0 [x, x, x, x, x, x, x, x, x]\n" + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n"
                                                     for i in range(1, 10)), "its aliases expand to more than"),
    ("- [shared\n", "plans.yaml:2: not valid YAML"),
])
def test_a_bad_plans_file_is_one_line_naming_it(tmp_path, content, message):
    import time

    path = tmp_path / "plans.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    started = time.perf_counter()
    with pytest.raises(MtbertError, match="^--plans .*" + message):
        load_plans(path)
    assert time.perf_counter() - started < 0.5


def test_a_plans_file_with_a_bom_and_anchors_loads(tmp_path):
    path = tmp_path / "plans.yaml"
    path.write_bytes(b"\xef\xbb\xbfbase: &frozen {layers: [{range: all, mode: frozen}]}\nsame: *frozen\n")
    assert [name for name, _ in load_plans(path).values] == ["base", "same"]


def test_variants_set_several_keys_together(tmp_path):
    (tmp_path / "variants.yaml").write_text(
        "shared: {model.sharing: shared}\nlora: {model.sharing: 'frozen+lora[r=4]', train.lr: 1.0e-3, "
        "train.max_steps: 7}\nplan: {model.sharing: {layers: [{range: all, mode: frozen}]}}\n")
    axis = sweep.load_variants(tmp_path / "variants.yaml")
    combos = combinations([axis, parse_grid("seed=0,1")])
    assert [c.title for c in combos][:3] == ["variant=shared seed=0", "variant=shared seed=1", "variant=lora seed=0"]
    assert combos[2].overrides == ["model.sharing=frozen+lora[r=4]", "train.lr=0.001", "train.max_steps=7", "seed=0"]
    assert json.loads(combos[4].overrides[0].partition("=")[2]) == {"layers": [{"range": "all", "mode": "frozen"}]}
    with pytest.raises(MtbertError, match="train.lr is varied twice .by variant and train.lr"):
        combinations([axis, parse_grid("train.lr=1e-4,1e-3")])
    with pytest.raises(MtbertError, match="model.sharing is varied twice"):
        combinations([axis, load_plans(_write(tmp_path / "plans.yaml", "- shared\n"))])


@pytest.mark.parametrize("content,message", [
    ("- shared\n", "expected a mapping name -> {recipe.key: value"),
    ("a: shared\n", "expected a mapping name"),
    ("a: {}\n", "expected a mapping name"),
    ("a: {train.lr=3: 1}\n", "variant 'a': 'train.lr=3' is not a recipe key"),
    ("a: {train.lr: 1}\na: {train.lr: 2}\n", r"variants.yaml:2: key 'a' appears twice"),
])
def test_a_bad_variants_file_is_one_line_naming_it(tmp_path, content, message):
    with pytest.raises(MtbertError, match="^--variants .*" + message):
        sweep.load_variants(_write(tmp_path / "variants.yaml", content))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_adapters_survey_variants_are_valid_recipes():
    from mtbert.config import load_recipe

    root = Path(__file__).parent.parent.parent
    axis = sweep.load_variants(root / "recipes" / "surveys" / "adapters.yaml")
    for combo in combinations([axis]):
        recipe = load_recipe(root / "recipes" / "sharing_survey.yaml", combo.overrides)
        assert recipe.train.max_steps == 300
    assert {name for name, _ in axis.values} >= {"shared", "individual", "frozen", "F3-S3", "lora_r4", "lora_r16",
                                                 "pals"}


def fake_result(plan, overall, rss_mib, step_s, status="ok"):
    result = {"labels": {"model.sharing": plan}, "status": status, "returncode": 0 if status == "ok" else 2,
              "peak_rss_bytes": rss_mib * 2**20}
    if status == "ok":
        result |= {"parameters_total": 1000, "parameters_trainable": 800, "checkpoint_bytes": 3 * 2**20,
                   "cuda_max_memory_allocated": None, "seconds_per_step": step_s,
                   "fastest_seconds_per_step": step_s / 2, "tokens_per_s": 1234.5,
                   "dev": {"sst": {"accuracy": 0.5}, "sts": {"pearson": 0.25}}, "overall": overall}
    return result


def test_tables_and_plot(tmp_path):
    results = [fake_result("shared", 0.4, 900, 1.0), fake_result("frozen", 0.3, 600, 0.4),
               fake_result("S1-I1", None, 50, None, status="failed")]
    write_tables(results, [Axis("model.sharing", [])], tmp_path, title="survey")
    table = (tmp_path / "sweep.md").read_text().splitlines()
    assert table[0] == ("| model.sharing | status | parameters | trainable | checkpoint MiB | peak RSS MiB | s/step | "
                        "fastest s/step | train tokens/s | sst accuracy | sts pearson | overall |")
    assert table[2] == "| shared | ok | 1,000 | 800 | 3.0 | 900 | 1.000 | 0.500 | 1,234 | 0.5000 | 0.2500 | 0.4000 |"
    assert table[4].startswith("| S1-I1 | failed (exit 2), see train_output.log |")
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert rows[1]["model.sharing"] == "frozen" and float(rows[1]["peak RSS MiB"]) == 600.0 and rows[2]["overall"] == ""
    assert (tmp_path / "sweep.png").read_bytes().startswith(PNG_MAGIC)
    # Runs that report what one more task adds (parameters.json's own_bytes_per_task) get a column for it.
    results[0]["own_bytes_per_task"] = 2**19
    write_tables(results, [Axis("model.sharing", [])], tmp_path, title="survey")
    table = (tmp_path / "sweep.md").read_text().splitlines()
    assert table[0].startswith("| model.sharing | status | parameters | trainable | per-task MiB | checkpoint MiB |")
    assert table[2].startswith("| shared | ok | 1,000 | 800 | 0.5 | 3.0 |")
    assert table[3].startswith("| frozen | ok | 1,000 | 800 |  |")


@pytest.mark.slow
def test_sweep_runs_tabulates_and_skips_finished_combinations_on_restart(tmp_path, tokenizer_dir, monkeypatch):
    recipe = write_recipe(tmp_path, tokenizer_dir, train={"max_steps": 3})
    (tmp_path / "plans.yaml").write_text("shared: shared\ngrouped: S1-I1[quora+sts]+R1[quora+sts]\n")
    axes = [load_plans(tmp_path / "plans.yaml")]
    messages = []
    results = run_sweep(recipe, axes, ["eval.max_examples=20"], tmp_path / "sweep", echo=messages.append)
    assert [r["status"] for r in results] == ["ok", "ok"], messages
    shared, grouped = results
    assert grouped["parameters_total"] > shared["parameters_total"] > 0  # two more layer copies
    assert shared["peak_rss_bytes"] > 50 * 2**20 and 0 < shared["seconds_per_step"] < shared["wall_s"]
    assert 0 < shared["fastest_seconds_per_step"] <= shared["seconds_per_step"]
    assert shared["tokens_per_s"] > 0 and shared["checkpoint_bytes"] > 4 * shared["parameters_total"]
    assert set(shared["dev"]) == {"sst", "quora", "sts"} and 0 <= shared["overall"] <= 1
    for name in ("sweep.md", "sweep.csv", "sweep.png", "sweep.json"):
        assert (tmp_path / "sweep" / name).is_file(), name
    assert (tmp_path / "sweep" / "sweep.png").read_bytes().startswith(PNG_MAGIC)
    rows = list(csv.DictReader((tmp_path / "sweep" / "sweep.csv").open()))
    assert [r["model.sharing"] for r in rows] == ["shared", "grouped"]
    # The table's overall is the grouped run's own: the mean of its tasks' main scores, as it exported them.
    folder = Path(next(arg for arg in grouped["command"] if arg.startswith("output_dir=")).removeprefix("output_dir="))
    exported = json.loads((folder / "metrics.json").read_text())
    assert float(rows[1]["overall"]) == grouped["overall"] == exported["overall"]
    assert exported["overall"] == pytest.approx(sum(exported[t]["main"] for t in ("sst", "quora", "sts")) / 3)
    assert float(rows[1]["sst accuracy"]) == exported["sst"]["accuracy"]
    assert any("[2/2] sharing=grouped: done in" in m for m in messages)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished combination was trained again")

    monkeypatch.setattr(subprocess, "Popen", no_training)
    messages.clear()
    again = run_sweep(recipe, axes, ["eval.max_examples=20"], tmp_path / "sweep", echo=messages.append)
    assert again == results
    assert all("finished earlier" in m for m in messages) and len(messages) == 2
    # An edited recipe is another experiment: nothing finished before counts.
    recipe.write_text(recipe.read_text() + "# edited\n")
    with pytest.raises(AssertionError, match="trained again"):
        run_sweep(recipe, axes, ["eval.max_examples=20"], tmp_path / "sweep", echo=messages.append)


@pytest.mark.slow
def test_a_failed_combination_is_reported_and_sets_the_exit_status(tmp_path, tokenizer_dir):
    recipe = write_recipe(tmp_path, tokenizer_dir, train={"max_steps": 2})
    result = CliRunner().invoke(app, ["sweep", str(recipe), "--grid", "tasks.sst.train_file=missing.csv",
                                      "--output", str(tmp_path / "sweep")])
    assert result.exit_code == 1
    assert "[1/1] train_file=missing.csv: FAILED with exit status 2" in result.output
    assert "train file of task sst not found" in result.output  # the child's own error, shown
    assert "| missing.csv | failed (exit 2), see train_output.log |" in result.output
    (folder,) = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir()]
    assert (folder / "failure.json").is_file() and not (folder / "result.json").exists()


def test_a_bad_combination_stops_the_sweep_before_anything_runs(tmp_path, tokenizer_dir):
    recipe = write_recipe(tmp_path, tokenizer_dir)
    result = CliRunner().invoke(app, ["sweep", str(recipe), "--grid", "model.sharing=shared,S5",
                                      "--output", str(tmp_path / "sweep")])
    assert result.exit_code == 2 and not (tmp_path / "sweep").exists()
    assert result.output.startswith("error: combination sharing=S5: command-line override: model.sharing: the layer "
                                    "counts of 'S5' add up to 5, but the encoder has 2 layers")
    assert "Example:" in CliRunner().invoke(app, ["sweep", "--help"]).output


def test_terminating_the_sweep_stops_the_running_child():
    import os
    import signal
    import sys
    import threading

    from mtbert.commands.sweep import _wait

    before = signal.getsignal(signal.SIGTERM)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        _wait(child)
    timer.join()
    assert child.poll() is not None  # killed, not left sleeping
    assert signal.getsignal(signal.SIGTERM) == before  # the sweep's handler is gone again
