"""bench-startup: the moment it takes as the first optimizer step, and a run that never gets there."""

import json

import pytest

from mtbert.commands import startup
from mtbert.errors import MtbertError


def test_step_one_is_its_loss_record(tmp_path):
    log = tmp_path / "train_log.jsonl"
    assert not startup._first_step_logged(log)
    log.write_text(json.dumps({"event": "start", "step": 0}) + "\n" + '{"step": 1, "lo')  # half written
    assert not startup._first_step_logged(log)
    log.write_text(json.dumps({"step": 1, "loss": 0.7, "loss/sst": 0.7}) + "\n")
    assert startup._first_step_logged(log)


@pytest.mark.slow
@pytest.mark.extended
def test_a_run_that_fails_is_one_error_with_its_message(tmp_path):
    with pytest.raises(MtbertError, match="did not reach step 1 within .*no-such-recipe.yaml"):
        startup.time_to_first_step(tmp_path / "no-such-recipe.yaml", [], tmp_path / "cache", tmp_path / "run", 120)
