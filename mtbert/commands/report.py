"""`mtbert report RUN_DIR` (and `mtbert evaluate --plots`): figures and a Markdown summary of a run.

The trained model is run over a labelled split of each task through the same path `mtbert evaluate`
takes (evaluation.predict_tasks), then, in `RUN_DIR/report-<split>/` unless told otherwise:

    training-curves.png      loss per task and dev main score per evaluation, from train_log.jsonl
    task-weights.png         runs whose balancing logs task weights: each task's weight per logging step
    <task>-confusion.png     classification tasks: gold against predicted labels
    <task>-labels.png        classification tasks: gold and predicted label counts
    <task>-scatter.png       regression tasks: predicted against gold score
    <task>-scores.png        regression tasks: gold and predicted score histograms
    report.md                the scores table, per-class figures and tables, and every image above

Each file is written atomically; files of other names in the folder are left alone, and those it
replaces are said to be replaced.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtbert import exported
from mtbert.commands import plots
from mtbert.commands.evaluation import SplitPredictions, format_table, predict_tasks, score_predictions
from mtbert.errors import MtbertError
from mtbert.files import check_output_folder, score, write_text_atomically, wrote
from mtbert.tasks import Task

LOG_FILE = "train_log.jsonl"
CURVES_FILE = "training-curves.png"
WEIGHTS_FILE = "task-weights.png"
REPORT_FILE = "report.md"


@dataclass
class Report:
    folder: Path
    results: dict
    "{task: {metric: value, main}, overall}, as mtbert evaluate returns them."
    files: list[Path] = field(default_factory=list)
    "Every file written, report.md last."
    replaced: set[Path] = field(default_factory=set)
    "Those of `files` that replaced a file of the same name (an earlier report's)."


def write_report(run_dir: str | Path, split: str = "dev", task_names: list[str] | None = None,
                 data_dir: str | None = None, batch_size: int = 128, out: str | Path | None = None,
                 progress: bool = True) -> Report:
    """Score the run's model on `split`, draw its figures and write report.md; return what was written."""
    run_dir = Path(run_dir)
    folder = Path(out) if out is not None else run_dir / f"report-{split}"
    check_output_folder(folder, "--out")  # before the work, not after it
    loaded = exported.load_model(run_dir, data_dir=data_dir)
    predicted = predict_tasks(loaded, split, task_names, batch_size, progress)
    results = score_predictions(predicted)
    report = Report(folder, results, replaced=set(folder.iterdir()) if folder.is_dir() else set())

    records, log_note = read_log(run_dir / LOG_FILE)
    exported_step = loaded.metrics.get("step")
    if records:
        main_metrics = {name: "/".join(task.main_metric) for name, task in loaded.tasks.items()}
        report.files.append(plots.training_curves(records, main_metrics, folder / CURVES_FILE,
                                                  title=f"{loaded.recipe.name}: training", exported_step=exported_step))
    if any("task_weights" in r for r in records):
        report.files.append(plots.task_weights(records, list(loaded.tasks), folder / WEIGHTS_FILE,
                                               title=f"{loaded.recipe.name}: balancing"))
    sections = []
    for name, prediction in predicted.items():
        files, text = _task_section(prediction, results[name], split, folder)
        report.files += files
        sections.append(text)
    markdown = _markdown(run_dir, loaded, split, predicted, results, records, log_note, exported_step, sections)
    write_text_atomically(folder / REPORT_FILE, markdown)
    report.files.append(folder / REPORT_FILE)
    report.replaced &= set(report.files)
    return report


def read_log(path: Path) -> tuple[list[dict], str]:
    """The run log's records and a note for the report. A cut-off last line (a run stopped while
    writing) is left out and said; a malformed line anywhere else is an error naming it."""
    if not path.is_file():
        return [], f"No `{LOG_FILE}` in the run folder, so no training curves."
    lines = path.read_text(encoding="utf-8").splitlines()
    records, note = [], ""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                note = f"The last line of `{LOG_FILE}` ({number}) is cut off and was left out."
                continue
            raise MtbertError(f"{path}:{number}: not a JSON record") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise MtbertError(f"{path}:{number}: a log record is a JSON object with an integer 'step'")
        records.append(record)
    return records, note


def file_stem(task_name: str) -> str:
    return re.sub(r"[^\w.-]", "_", task_name)


def class_names(task: Task) -> list[str]:
    return list(task.label_names) if task.label_names else [str(i) for i in range(task.num_labels)]


def _task_section(prediction: SplitPredictions, scores: dict, split: str, folder: Path) -> tuple[list[Path], str]:
    task, result = prediction.task, prediction.result
    gold, predicted = result.labels, result.predictions
    stem, n = file_stem(task.name), len(gold)
    score_text = ", ".join(f"{metric} {value:.4f}" for metric, value in scores.items() if metric != "main")
    lines = [f"## {task.name}", ""]
    if task.kind == "regression":
        low_high = f", range {task.label_range[0]:g} to {task.label_range[1]:g}" if task.label_range else ""
        lines += [f"Regression{low_high}; {n} {split} examples; {score_text}.", ""]
        files = [plots.scatter(gold, predicted, folder / f"{stem}-scatter.png", value_range=task.label_range,
                               title=f"{task.name}: predicted against gold ({split}, {score_text.split(',')[0]})"),
                 plots.score_distribution(gold, predicted, folder / f"{stem}-scores.png",
                                          value_range=task.label_range,
                                          title=f"{task.name}: gold and predicted scores ({split}, n={n})")]
        lines += [f"![{task.name}: predicted against gold]({files[0].name})", "",
                  f"![{task.name}: gold and predicted scores]({files[1].name})", "",
                  "| | mean | std | min | max |", "|---|---|---|---|---|",
                  *(f"| {label} | {v.mean():.3f} | {v.std():.3f} | {v.min():.3f} | {v.max():.3f} |"
                    for label, v in (("gold", np.asarray(gold, float)), ("predicted", np.asarray(predicted, float)))),
                  ""]
        return files, "\n".join(lines)
    names = class_names(task)
    lines += [f"{len(names)} classes ({', '.join(names)}); {n} {split} examples; {score_text}.", ""]
    files = [plots.confusion_matrix(gold, predicted, names, folder / f"{stem}-confusion.png",
                                    title=f"{task.name}: confusion matrix ({split}, n={n})"),
             plots.class_distribution(gold, predicted, names, folder / f"{stem}-labels.png",
                                      title=f"{task.name}: gold and predicted labels ({split})")]
    lines += [f"![{task.name}: confusion matrix]({files[0].name})", "",
              f"![{task.name}: gold and predicted labels]({files[1].name})", "",
              "| class | precision | recall | F1 | gold | predicted |", "|---|---|---|---|---|---|"]
    for index, name in enumerate(names):
        is_gold, is_pred = gold == index, predicted == index
        hits = int(np.sum(is_gold & is_pred))
        precision = hits / is_pred.sum() if is_pred.sum() else 0.0
        recall = hits / is_gold.sum() if is_gold.sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        lines.append(f"| {name} | {precision:.3f} | {recall:.3f} | {f1:.3f} | {int(is_gold.sum())} | "
                     f"{int(is_pred.sum())} |")
    lines.append("")
    return files, "\n".join(lines)


def _markdown(run_dir: Path, loaded: exported.LoadedModel, split: str, predicted: dict[str, SplitPredictions],
              results: dict, records: list[dict], log_note: str, exported_step: int | None,
              sections: list[str]) -> str:
    from mtbert import __version__

    metric_names: list[str] = []
    for name in predicted:
        metric_names += [m for m in results[name] if m != "main" and m not in metric_names]
    header = ["task", "kind", "examples", *metric_names, "main"]
    rows = [[name, p.task.kind, str(len(p.ids)),
             *(f"{results[name][m]:.4f}" if m in results[name] else "" for m in metric_names),
             f"{results[name]['main']:.4f}"] for name, p in predicted.items()]
    rows.append(["**overall**", "", "", *("" for _ in metric_names), f"**{results['overall']:.4f}**"])
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]

    mains = "; ".join(f"{name}: {' and '.join(p.task.main_metric)}" for name, p in predicted.items())
    lines = [f"# {loaded.recipe.name}: {split} report", "",
             f"Model `{run_dir}` scored on the {split} split by mtbert {__version__}."]
    if exported_step is not None and "overall" in loaded.metrics:
        lines[-1] += (f" It is the model exported at training step {exported_step} (overall dev "
                      f"{score(loaded.metrics['overall']):.4f} on the dev examples evaluated during training).")
    lines += ["", f"## Scores ({split})", "", *table, "",
              f"A task's main score is the mean of its main metric(s) ({mains}); overall is the mean of the "
              f"main scores.", "", "## Training curves", ""]
    if records:
        logged = sum("loss" in r for r in records)
        evaluations = sum("dev" in r for r in records)
        lines += [f"![training loss and dev score per evaluation]({CURVES_FILE})", "",
                  f"From `{LOG_FILE}`: {logged} logging records, {evaluations} evaluations."]
        if any("task_weights" in r for r in records):
            lines += ["", f"![each task's balancing weight per logging step]({WEIGHTS_FILE})"]
    if log_note:
        lines.append(log_note)
    lines.append("")
    return "\n".join(lines + sections)


def run(run_dir: Path, split: str, tasks: list[str] | None, out: Path | None, data_dir: str | None, batch_size: int,
        echo: Callable[[str], None]) -> None:
    """`mtbert report`: write the report, print the scores table and each file written."""
    written = write_report(run_dir, split, tasks, data_dir, batch_size, out)
    echo(format_table(written.results))
    for path in written.files:
        echo(f"{wrote(path in written.replaced)} {path}")
