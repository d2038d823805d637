"""`mtbert evaluate`: score an exported model on a split of its tasks, as a table and a JSON file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mtbert.commands.evaluation import evaluate_checkpoint, format_table
from mtbert.commands.report import write_report
from mtbert.files import check_output_file, json_text, write_text_atomically, wrote


def run(ckpt: Path, split: str, tasks: list[str] | None, data_dir: str | None, output: Path | None,
        batch_size: int, plots: bool, echo: Callable[[str], None]) -> None:
    """Score, print the table, write the scores to `output` (default CKPT/eval-<split>.json); with `plots`,
    also the report's figures and report.md (mtbert report)."""
    if output is not None:
        check_output_file(output, "--output")  # before the work, not after it
    if plots:
        report = write_report(ckpt, split, tasks, data_dir, batch_size)
        results = report.results
    else:
        results = evaluate_checkpoint(ckpt, split, tasks, data_dir, batch_size)
    echo(format_table(results))
    if plots:
        echo(f"wrote {len(report.files)} report files to {report.folder}"
             + (f" (replacing {len(report.replaced)} of an earlier report)" if report.replaced else ""))
    target = output or Path(ckpt) / f"eval-{split}.json"
    existed = target.exists()
    write_text_atomically(target, json_text(results, indent=2) + "\n")
    echo(f"{wrote(existed)} {target}")
