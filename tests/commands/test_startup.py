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


def test_resident_memory_is_split_into_private_and_mapped_files(tmp_path):
    import mmap
    import os

    if not os.path.exists("/proc/self/status"):
        pytest.skip("no /proc (not Linux)")
    data = tmp_path / "mapped.bin"
    data.write_bytes(os.urandom(32 * 2**20))
    before = startup._resident(os.getpid())
    with open(data, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        sum(mapped[i] for i in range(0, len(mapped), 4096))  # touch every page of the mapped file
        after = startup._resident(os.getpid())
    # Touching 32 MiB of a mapped file grows the file part by about that, not the private part.
    assert after["rss_file_mib"] - before["rss_file_mib"] > 24
    assert after["rss_anon_mib"] - before["rss_anon_mib"] < 8
    assert startup._resident(2**22 + 12345) == {}  # no such process
