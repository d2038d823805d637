"""`mtbert sweep`: train every combination of a grid of recipe values and tabulate what each one costs
(parameters, checkpoint size, peak memory, time) and what it buys (dev scores).

Each combination runs as its own `python -m mtbert train RECIPE ... output_dir=<its folder>` process, so
the memory it reports is its own: on a CPU the child's maximum resident set size (os.wait4), on a GPU
the maximum memory it allocated, which the child logs in its train_log.jsonl. A combination is finished
when its result.json is written (atomically, last); a restarted sweep skips finished combinations and
runs again the ones that failed or never finished. A failed combination stays in the tables as failed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mtbert import yamlfile
from mtbert.config import load_recipe
from mtbert.errors import MtbertError
from mtbert.files import json_text, score, write_bytes_atomically

RESULT_FILE = "result.json"
FAILURE_FILE = "failure.json"
TRAIN_OUTPUT = "train_output.log"
TABLE_FILES = ("sweep.md", "sweep.csv", "sweep.png")
MIB = 2**20


@dataclass
class Axis:
    """One varied recipe key and the values it takes: (label for the table, value for the override).

    The variants axis (key `variant`) varies several keys at once: each of its values is a mapping of recipe
    key -> the text of its override."""

    key: str
    values: list[tuple[str, str | dict[str, str]]]

    def overrides(self, value: str | dict[str, str]) -> list[str]:
        return [f"{k}={v}" for k, v in value.items()] if isinstance(value, dict) else [f"{self.key}={value}"]

    @property
    def varied(self) -> set[str]:
        """The recipe keys this axis sets."""
        return {k for _, v in self.values if isinstance(v, dict) for k in v} or {self.key}


@dataclass
class Combination:
    labels: dict[str, str]
    "Recipe key -> the label of its value."
    overrides: list[str]
    "key=value overrides, as the child's command line takes them."

    @property
    def title(self) -> str:
        return " ".join(f"{key.rsplit('.', 1)[-1]}={label}" for key, label in self.labels.items())

    @property
    def folder(self) -> str:
        """Readable and unique: the labels made safe for a file name, then a hash of the exact overrides."""
        slug = re.sub(r"[^A-Za-z0-9+.=-]+", "_", self.title.replace(" ", "-")).strip("_")[:60]
        digest = hashlib.sha1("\n".join(self.overrides).encode()).hexdigest()[:8]
        return f"{slug}-{digest}"


# ---------------------------------------------------------------------------------------------
# What to run


def split_values(text: str) -> list[str]:
    """Split on commas outside [...] and {...}, so `S4-I2[quora+sts,sst]` stays one value."""
    values, depth, current = [], 0, []
    for char in text:
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    values.append("".join(current).strip())
    return values


def parse_grid(item: str) -> Axis:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or not text.strip():
        raise MtbertError(f"--grid {item!r}: expected key=value1,value2,... e.g. model.sharing=shared,frozen")
    values = split_values(text)
    if any(not v for v in values):
        raise MtbertError(f"--grid {item!r}: an empty value (two commas in a row, or a trailing comma)")
    if len(set(values)) != len(values):
        raise MtbertError(f"--grid {item!r}: a value is listed twice")
    return Axis(key, [(v, v) for v in values])


def load_plans(path: Path) -> Axis:
    """A YAML file of sharing plans: a list of short strings, or a mapping name -> plan (string or mapping)."""
    try:  # strict UTF-8, no key twice, aliases bounded: as a recipe is read
        data, _ = yamlfile.load_file(path, "plan file")
    except MtbertError as e:
        raise MtbertError(f"--plans {e}") from None
    if isinstance(data, list) and data and all(isinstance(p, str) for p in data):
        repeated = next((p for i, p in enumerate(data) if p in data[:i]), None)
        if repeated is not None:
            raise MtbertError(f"--plans {path}: the plan {repeated!r} is listed twice")
        named = {p: p for p in data}
    elif isinstance(data, dict) and data and all(isinstance(p, (str, dict)) for p in data.values()):
        named = {str(name): plan for name, plan in data.items()}
    else:
        raise MtbertError(f"--plans {path}: expected a list of short plans (shared, S4-I2, ...) or a mapping "
                          f"name -> plan, where a plan is a short string or a structured mapping")
    # JSON is YAML, and a child's key=value override is read as YAML: a mapping travels as one argument.
    return Axis("model.sharing", [(name, plan if isinstance(plan, str) else json.dumps(plan))
                                  for name, plan in named.items()])


def load_variants(path: Path) -> Axis:
    """A YAML file of named variants, each a mapping of recipe keys to values set together, e.g.
    `lora_r16: {model.sharing: "frozen+lora[r=16]", train.lr: 1.0e-3}`: plans that each want their own
    learning rate in one sweep."""
    try:  # strict UTF-8, no key twice, aliases bounded: as a recipe is read
        data, _ = yamlfile.load_file(path, "variants file")
    except MtbertError as e:
        raise MtbertError(f"--variants {e}") from None
    if not (isinstance(data, dict) and data and all(isinstance(v, dict) and v for v in data.values())):
        raise MtbertError(f"--variants {path}: expected a mapping name -> {{recipe.key: value, ...}}, e.g. "
                          f"lora: {{model.sharing: frozen+lora, train.lr: 1.0e-3}}")
    for name, settings in data.items():
        bad = next((k for k in settings if not isinstance(k, str) or not k.strip() or "=" in k), None)
        if bad is not None:
            raise MtbertError(f"--variants {path}: variant {name!r}: {bad!r} is not a recipe key (e.g. train.lr)")
    # A child's key=value override is read as YAML: text travels as it is, anything else as JSON (which is YAML).
    return Axis("variant", [(str(name), {k: v if isinstance(v, str) else json.dumps(v) for k, v in settings.items()})
                            for name, settings in data.items()])


def combinations(axes: list[Axis]) -> list[Combination]:
    for i, axis in enumerate(axes):
        for other in axes[:i]:
            twice = sorted(axis.varied & other.varied)
            if twice:
                raise MtbertError(f"the key {twice[0]} is varied twice (by {other.key} and {axis.key}; --grid, "
                                  f"--plans and --variants must vary different keys)")
    return [Combination({a.key: label for a, (label, _) in zip(axes, chosen)},
                        [o for a, (_, value) in zip(axes, chosen) for o in a.overrides(value)])
            for chosen in itertools.product(*(a.values for a in axes))]


# ---------------------------------------------------------------------------------------------
# Running


def run_sweep(recipe: Path, axes: list[Axis], overrides: list[str], output: Path, data_dir: str | None = None,
              echo: Callable[[str], None] = print) -> list[dict]:
    """Run every combination not finished before; write the tables; return one result per combination."""
    combos = combinations(axes)
    if not combos:
        raise MtbertError("nothing to sweep: give at least one --grid key=v1,v2, --plans FILE or --variants FILE")
    for combo in combos:  # every combination must be a valid recipe before anything runs
        try:
            load_recipe(recipe, overrides + combo.overrides, data_dir=data_dir)
        except MtbertError as e:
            raise MtbertError(f"combination {combo.title}: {e}") from None
    output.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(output / "sweep.json", json.dumps(
        {"recipe": str(recipe), "overrides": overrides, "data_dir": data_dir,
         "grid": {a.key: [label for label, _ in a.values] for a in axes}}, indent=2).encode())
    results = []
    for number, combo in enumerate(combos, start=1):
        prefix = f"[{number}/{len(combos)}] {combo.title}"
        folder = output / combo.folder
        finished = _finished(folder, combo, _identity(recipe, overrides, data_dir))
        if finished is not None:
            echo(f"{prefix}: finished earlier ({_summary(finished)})")
            results.append(finished)
            continue
        echo(f"{prefix}: training (output in {folder / TRAIN_OUTPUT})")
        result = run_combination(recipe, combo, overrides, folder, data_dir)
        if result["status"] == "ok":
            echo(f"{prefix}: done in {_duration(result['wall_s'])} ({_summary(result)})")
        else:
            echo(f"{prefix}: FAILED with exit status {result['returncode']}; the end of its output:")
            echo("\n".join("    " + line for line in result["output_tail"]))
        results.append(result)
    write_tables(results, axes, output, title=Path(recipe).stem)
    return results


def run(recipe: Path, grid: list[str], plans: Path | None, overrides: list[str], output: Path | None,
        data_dir: str | None, echo: Callable[[str], None], say: Callable[[str], None],
        variants: Path | None = None) -> int:
    """`mtbert sweep`: run the grid (and plans, variants), print the table (`say`: on stderr); return the exit
    status, 1 when a combination failed."""
    axes = ([load_variants(variants)] if variants else []) + [parse_grid(item) for item in grid] + (
        [load_plans(plans)] if plans else [])
    folder = output or Path("sweeps") / recipe.stem
    results = run_sweep(recipe, axes, overrides, folder, data_dir, echo=echo)
    echo((folder / "sweep.md").read_text())
    echo(f"wrote {folder / 'sweep.md'}, {folder / 'sweep.csv'} and {folder / 'sweep.png'}")
    failed = [r for r in results if r["status"] != "ok"]
    if failed:
        say(f"{len(failed)} of {len(results)} combination(s) failed")
        return 1
    return 0


def _identity(recipe: Path, overrides: list[str], data_dir: str | None) -> dict:
    """What else a finished result must match to be reused: the recipe as it reads now, the fixed overrides
    and the data folder. Editing the recipe makes every combination run again."""
    return {"recipe_sha1": hashlib.sha1(Path(recipe).read_bytes()).hexdigest(), "fixed_overrides": overrides,
            "data_dir": data_dir}


def _finished(folder: Path, combo: Combination, identity: dict) -> dict | None:
    """The result of an earlier run of this combination, re-measured from its folder; None: run it."""
    try:
        result = json.loads((folder / RESULT_FILE).read_text())
        same = result.get("overrides") == combo.overrides and all(result.get(k) == v for k, v in identity.items())
        return result | measure(folder) if same else None
    except (OSError, ValueError, KeyError, StopIteration):
        return None  # missing or unreadable outputs: the run is not usable


def run_combination(recipe: Path, combo: Combination, overrides: list[str], folder: Path,
                    data_dir: str | None) -> dict:
    """Train one combination in a child process and measure it; result.json marks it finished."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (RESULT_FILE, FAILURE_FILE):
        (folder / stale).unlink(missing_ok=True)
    # --overwrite: the folder is the sweep's own and already holds the child's output file.
    command = [sys.executable, "-m", "mtbert", "train", str(recipe), *overrides, *combo.overrides,
               f"output_dir={folder}", "--overwrite"] + (["--data-dir", data_dir] if data_dir else [])
    started = time.perf_counter()
    with open(folder / TRAIN_OUTPUT, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env=os.environ | {"PYTHONUNBUFFERED": "1"})
        returncode, peak_rss = _wait(process)
    result = {"labels": combo.labels, "overrides": combo.overrides, **_identity(recipe, overrides, data_dir),
              "command": command, "returncode": returncode,
              "wall_s": time.perf_counter() - started, "peak_rss_bytes": peak_rss}
    if returncode == 0:
        try:
            result |= {"status": "ok", **measure(folder)}
        except (OSError, ValueError, KeyError, StopIteration) as e:
            result |= {"status": "failed", "error": f"the run finished but its outputs are incomplete: {e!r}"}
    else:
        result["status"] = "failed"
    if result["status"] == "ok":
        write_bytes_atomically(folder / RESULT_FILE, json_text(result, indent=2).encode())
    else:
        result["output_tail"] = _tail(folder / TRAIN_OUTPUT) + ([result["error"]] if "error" in result else [])
        write_bytes_atomically(folder / FAILURE_FILE, json_text(result, indent=2).encode())
    return result


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _wait(process: subprocess.Popen) -> tuple[int, int | None]:
    """Exit status and the child's own peak resident set size in bytes (None where os.wait4 is missing).

    Interrupted (Ctrl-C, or SIGTERM, which would otherwise end this process and orphan the child), it
    stops the child before passing the interruption on."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if not hasattr(os, "wait4"):
            return process.wait(), None
        _, status, usage = os.wait4(process.pid, 0)
    except BaseException:  # interrupted: do not leave the child training on its own
        process.kill()
        process.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    process.returncode = os.waitstatus_to_exitcode(status)
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    return process.returncode, usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def measure(folder: Path) -> dict:
    """Figures a finished run left in its folder: parameters, checkpoint size, speed, GPU memory, dev scores."""
    counts = json.loads((folder / "parameters.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    records = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines() if line.strip()]
    last = next(r for r in reversed(records) if "elapsed_s" in r)
    # Seconds per step in each logging window: the fastest is the least disturbed by other work on the machine.
    points = [(0, 0.0)] + [(r["step"], r["elapsed_s"]) for r in records if "elapsed_s" in r]
    windows = [(t2 - t1) / (s2 - s1) for (s1, t1), (s2, t2) in zip(points, points[1:]) if s2 > s1]
    cuda = [r["cuda_max_memory_allocated"] for r in records if "cuda_max_memory_allocated" in r]
    return {"parameters_total": counts["total"], "parameters_trainable": counts["trainable"],
            "own_bytes_per_task": counts.get("own_bytes_per_task"),  # what one more task like these adds
            "checkpoint_bytes": (folder / "model.safetensors").stat().st_size,
            "cuda_max_memory_allocated": cuda[-1] if cuda else None,
            "steps": last["step"], "train_s": last["elapsed_s"], "seconds_per_step": last["elapsed_s"] / last["step"],
            "fastest_seconds_per_step": min(windows),
            "tokens_per_s": last["tokens_per_s"], "best_step": metrics.get("step"),
            "dev": {task: {k: v for k, v in scores.items() if k != "main"}
                    for task, scores in metrics.items() if isinstance(scores, dict)},
            "overall": score(metrics["overall"])}


def _tail(path: Path, lines: int = 15) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    # Progress bars redraw with carriage returns: keep what the last redraw of each line shows.
    return [line.rsplit("\r", 1)[-1] for line in text.splitlines()][-lines:]


def _summary(result: dict) -> str:
    memory = (f"GPU max allocated {result['cuda_max_memory_allocated'] / MIB:,.0f} MiB"
              if result.get("cuda_max_memory_allocated") else
              f"peak RSS {result['peak_rss_bytes'] / MIB:,.0f} MiB" if result.get("peak_rss_bytes") else "")
    return (f"overall {result['overall']:.4f}, {result['parameters_total']:,} parameters "
            f"({result['parameters_trainable']:,} trainable), {memory}, {result['seconds_per_step']:.3f} s/step")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# ---------------------------------------------------------------------------------------------
# Tables and plot


def table_rows(results: list[dict], axes: list[Axis]) -> tuple[list[str], list[list], list[list[str]]]:
    """Header, raw values (for CSV) and formatted cells (for Markdown), one row per combination."""
    metric_columns: list[tuple[str, str]] = []
    for result in results:
        for task, scores in result.get("dev", {}).items():
            metric_columns += [(task, m) for m in scores if (task, m) not in metric_columns]
    gpu = any(r.get("cuda_max_memory_allocated") for r in results)
    own = any(r.get("own_bytes_per_task") for r in results)  # runs from before the figure existed lack it
    header = [*(a.key for a in axes), "status", "parameters", "trainable", *(["per-task MiB"] if own else []),
              "checkpoint MiB", "peak RSS MiB",
              *(["GPU max allocated MiB"] if gpu else []), "s/step", "fastest s/step", "train tokens/s",
              *(f"{task} {metric}" for task, metric in metric_columns), "overall"]
    raw, cells = [], []
    for r in results:
        ok = r["status"] == "ok"
        values = [*(r["labels"][a.key] for a in axes),
                  "ok" if ok else f"failed (exit {r['returncode']}), see {TRAIN_OUTPUT}",
                  r.get("parameters_total"), r.get("parameters_trainable"),
                  *([r["own_bytes_per_task"] / MIB if r.get("own_bytes_per_task") else None] if own else []),
                  r["checkpoint_bytes"] / MIB if ok else None,
                  r["peak_rss_bytes"] / MIB if r.get("peak_rss_bytes") else None,
                  *([r["cuda_max_memory_allocated"] / MIB if r.get("cuda_max_memory_allocated") else None]
                    if gpu else []),
                  r.get("seconds_per_step"), r.get("fastest_seconds_per_step"), r.get("tokens_per_s"),
                  *(r.get("dev", {}).get(task, {}).get(metric) for task, metric in metric_columns),
                  r.get("overall")]
        raw.append(values)
        cells.append([_cell(column, v) for column, v in zip(header, values)])
    return header, raw, cells


def _cell(column: str, value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.replace("|", "\\|")
    if column in ("parameters", "trainable"):
        return f"{value:,}"
    if column.endswith("MiB") or column == "train tokens/s":
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    if column.endswith("s/step"):
        return f"{value:.3f}"
    return f"{value:.4f}"


def write_tables(results: list[dict], axes: list[Axis], output: Path, title: str) -> None:
    header, raw, cells = table_rows(results, axes)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    write_bytes_atomically(output / "sweep.md", ("\n".join(lines) + "\n").encode())
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in raw])
    write_bytes_atomically(output / "sweep.csv", buffer.getvalue().encode())
    write_bytes_atomically(output / "sweep.png", plot(results, title))


def plot(results: list[dict], title: str) -> bytes:
    """Overall dev score against peak memory and against time per step (the fastest logging window, the figure
    least disturbed by other work on the machine), one labelled point per combination."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    done = [r for r in results if r["status"] == "ok"]
    gpu = any(r.get("cuda_max_memory_allocated") for r in done)
    memory_key, memory_label = (("cuda_max_memory_allocated", "peak GPU memory allocated (MiB)") if gpu else
                                ("peak_rss_bytes", "peak resident memory, RSS (MiB)"))
    # One colour and marker per combination, named in a legend below the axes: labels written beside
    # the points overlap as soon as two plans score alike, which is the interesting case.
    colours = plt.get_cmap("tab10" if len(done) <= 10 else "tab20").colors
    markers = "osD^vPX<>*"
    rows = max(1, math.ceil(len(done) / 4))
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5 + 0.3 * rows), sharey=True)
    for axis, x_of, label in ((left, lambda r: (r.get(memory_key) or 0) / MIB, memory_label),
                              (right, lambda r: r["fastest_seconds_per_step"],
                               "training time per step, fastest logging window (s)")):
        for i, r in enumerate(done):
            axis.scatter([x_of(r)], [r["overall"]], color=colours[i % len(colours)], marker=markers[i % len(markers)],
                         s=48, label=" ".join(r["labels"].values()), edgecolors="black", linewidths=0.4)
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
        axis.margins(x=0.15, y=0.15)
    left.set_ylabel("overall dev score (mean of the tasks' main scores)")
    failed = len(results) - len(done)
    figure.suptitle(f"{title}: quality against memory and time" + (f" ({failed} failed, not shown)" if failed else ""))
    if done:
        handles, names = left.get_legend_handles_labels()
        figure.legend(handles, names, loc="lower center", ncol=min(4, len(done)), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.07 * rows, 1, 1))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()
