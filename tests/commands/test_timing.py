"""Time per step from a run's log, per stage, without the windows that hold an evaluation."""

import json

import pytest

from mtbert.commands.timing import main, stage_times, summary
from mtbert.errors import MtbertError


def test_windows_are_timed_per_stage_and_evaluation_windows_left_out():
    records = [{"step": 2, "elapsed_s": 4.0, "stage": "a"}, {"step": 4, "elapsed_s": 6.0, "stage": "a"},
               {"step": 4, "dev": {}},
               {"step": 6, "elapsed_s": 20.0, "stage": "b"},  # holds step 4's evaluation (after its log record)
               {"step": 8, "elapsed_s": 22.0, "stage": "b"},
               {"step": 9, "dev": {}},
               {"step": 10, "elapsed_s": 40.0, "stage": "b"},  # holds step 9's evaluation
               {"step": 12, "elapsed_s": 43.0, "stage": "b"}]
    times = stage_times(records)
    assert times["a"] == {"steps": 4, "mean_s_per_step": 1.5, "fastest_s_per_step": 1.0}
    assert times["b"] == {"steps": 4, "mean_s_per_step": 5.0 / 4, "fastest_s_per_step": 1.0}


def test_summary_and_printout(tmp_path, capsys):
    (tmp_path / "train_log.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"step": 20, "elapsed_s": 10.0}, {"step": 40, "elapsed_s": 18.0}, {"step": 40, "dev": {}}]) + "\n")
    (tmp_path / "metrics.json").write_text(json.dumps({"sst": {"accuracy": 0.5, "main": 0.5}, "overall": 0.5,
                                                        "step": 40}))
    assert summary(tmp_path)["stages"] == {"run": {"steps": 40, "mean_s_per_step": 0.45, "fastest_s_per_step": 0.4}}
    main([str(tmp_path)])
    assert "dev sst 0.5000 | overall 0.5000 (step 40)" in capsys.readouterr().out
    with pytest.raises(MtbertError, match="not a finished run folder"):
        summary(tmp_path / "missing")
