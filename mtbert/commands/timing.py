"""Time per training step of finished runs, from their train_log.jsonl, per stage: the mean over the
logging windows and the fastest window (the figure least disturbed by other work on a shared machine),
next to the dev scores of the exported model.

    python -m mtbert.commands.timing ckpt/rrobin ckpt/rrobin_smart

A window is the steps between two log records; windows that hold an evaluation during training are
left out, so the figures count training alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mtbert.errors import MtbertError


def stage_times(records: list[dict]) -> dict[str, dict]:
    """Per stage (or `run` for a log without stages): steps, mean and fastest seconds per step."""
    evaluated = {r["step"] for r in records if "dev" in r}
    windows: dict[str, list[tuple[int, float]]] = {}
    previous = (0, 0.0)
    for record in (r for r in records if "elapsed_s" in r):
        step, elapsed = record["step"], record["elapsed_s"]
        steps = step - previous[0]
        if steps > 0 and not any(previous[0] <= e < step for e in evaluated):  # evaluated after its log record
            windows.setdefault(record.get("stage", "run"), []).append((steps, elapsed - previous[1]))
        previous = (step, elapsed)
    return {stage: {"steps": sum(n for n, _ in w), "mean_s_per_step": sum(t for _, t in w) / sum(n for n, _ in w),
                    "fastest_s_per_step": min(t / n for n, t in w)} for stage, w in windows.items()}


def summary(folder: Path) -> dict:
    try:
        records = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines() if line.strip()]
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError) as e:
        raise MtbertError(f"{folder}: not a finished run folder ({e})") from None
    dev = {task: scores["main"] for task, scores in metrics.items() if isinstance(scores, dict)}
    return {"run": str(folder), "dev": dev, "overall": metrics["overall"], "best_step": metrics.get("step"),
            "stages": stage_times(records)}


def main(folders: list[str]) -> None:
    for folder in folders:
        result = summary(Path(folder))
        scores = " | ".join(f"{task} {score:.4f}" for task, score in result["dev"].items())
        print(f"{folder}: dev {scores} | overall {result['overall']:.4f} (step {result['best_step']})")
        for stage, t in result["stages"].items():
            print(f"  {stage}: {t['steps']} steps timed, {t['mean_s_per_step']:.3f} s/step mean, "
                  f"{t['fastest_s_per_step']:.3f} s/step fastest window")


if __name__ == "__main__":
    main(sys.argv[1:])
