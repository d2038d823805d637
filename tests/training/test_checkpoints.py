"""Resumable state on disk: the pickle-free codec, checkpoint folders, `latest`, pruning, and signals."""

import errno
import hashlib
import json
import os
import threading

import numpy as np
import pytest
import torch
from safetensors import SafetensorError

import mtbert.training.checkpoints
from mtbert.errors import MtbertError
from mtbert.training.checkpoints import (
    Processes,
    complete_checkpoints,
    decode,
    encode,
    find_checkpoint,
    latest_checkpoint,
    prune,
    verify,
)
from mtbert.training.state import TrainingState


class Box:
    """A stateful object a later feature might track (a stage counter, an objective's state)."""

    def __init__(self, value=None):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def test_codec_round_trips_what_state_dicts_hold():
    weights = torch.randn(3, 4)
    value = {
        "tensor": weights, "view": weights[1], "same_tensor_again": weights, "ints": torch.arange(5),
        "bf16": torch.ones(2, dtype=torch.bfloat16), "empty": torch.empty(0),
        "int_keys": {0: {"step": 3}, 1: None}, "tuple": (0.9, 0.999), "nested_tuple": (1, (2, 3)),
        "floats": [float("nan"), float("inf"), -float("inf"), 0.1], "numpy": np.arange(4, dtype=np.uint32),
        "np_scalar": np.float32(1.5), "dtype": torch.float16, "dollar": {"$tensor": "not a reference"},
        "flags": [True, False, None, "text"],
    }
    tree, tensors = encode(value)
    text = json.dumps(tree, allow_nan=False)  # strict JSON: non-finite floats are encoded, not emitted
    back = decode(json.loads(text), tensors)
    assert torch.equal(back["tensor"], weights) and torch.equal(back["view"], weights[1])
    assert torch.equal(back["same_tensor_again"], weights) and back["bf16"].dtype == torch.bfloat16
    assert back["empty"].numel() == 0 and torch.equal(back["ints"], torch.arange(5))
    assert back["int_keys"] == {0: {"step": 3}, 1: None}
    assert back["tuple"] == (0.9, 0.999) and back["nested_tuple"] == (1, (2, 3))
    assert np.isnan(back["floats"][0]) and back["floats"][1:] == [float("inf"), -float("inf"), 0.1]
    assert back["numpy"].dtype == np.uint32 and back["numpy"].tolist() == [0, 1, 2, 3]
    assert back["np_scalar"] == np.float32(1.5) and type(back["np_scalar"]) is np.float32
    assert back["dtype"] is torch.float16 and back["dollar"] == {"$tensor": "not a reference"}
    assert back["flags"] == [True, False, None, "text"]


def test_codec_refuses_objects_and_names_where_they_are():
    with pytest.raises(TypeError, match=r"optimizer/scaler: cannot store a .*Box"):
        encode({"optimizer": {"scaler": Box()}})


def make_state(value) -> tuple[TrainingState, Box, Box]:
    state, shared, mine = TrainingState(), Box(value), Box(value)
    state.add("shared", shared)
    state.add("mine", mine, per_process=True)
    return state, shared, mine


def test_save_and_load_every_part(tmp_path):
    state, _, _ = make_state({"weights": torch.ones(2), "step": 7})
    folder = state.save(tmp_path, 7, Processes(), {"recipe": "x"})
    assert folder == tmp_path / "step-7" and (tmp_path / "latest").read_text().strip() == "step-7"
    assert sorted(p.name for p in folder.iterdir()) == [
        "mine.process-0.json", "mine.process-0.safetensors", "shared.json", "shared.safetensors", "state.json"]
    restored, shared, mine = make_state(None)
    manifest = restored.load(folder, Processes())
    assert manifest["step"] == 7 and manifest["info"] == {"recipe": "x"}
    assert shared.value["step"] == 7 and torch.equal(mine.value["weights"], torch.ones(2))
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in os.listdir(folder))


def test_per_process_parts_are_written_by_each_process(tmp_path):
    """Two processes, played by two threads meeting at a shared barrier."""
    barrier = threading.Barrier(2, timeout=30)
    errors = []

    def process(index: int, value: int, load: bool) -> None:
        try:
            state, shared, mine = make_state(None if load else value)
            processes = Processes(index, 2, barrier.wait)
            if load:
                state.load(tmp_path / "step-3", processes)
                assert (shared.value, mine.value) == (10, value)  # the main process's shared part, its own
            else:
                state.save(tmp_path, 3, processes, {})
        except Exception as error:  # noqa: BLE001 - reported by the test below
            errors.append(error)
            barrier.abort()

    for load in (False, True):
        threads = [threading.Thread(target=process, args=(i, 10 + i, load)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
    assert sorted(p.name for p in (tmp_path / "step-3").glob("mine.*")) == ["mine.process-0.json",
                                                                         "mine.process-1.json"]
    with pytest.raises(MtbertError, match="2 process.*this run has 1"):
        make_state(None)[0].load(tmp_path / "step-3", Processes(0, 1))


def test_loading_a_checkpoint_with_other_parts_is_an_error(tmp_path):
    state, _, _ = make_state(1)
    folder = state.save(tmp_path, 1, Processes(), {})
    other = TrainingState()
    other.add("shared", Box())
    other.add("stage", Box())
    with pytest.raises(MtbertError, match="lacks stage.*has mine"):
        other.load(folder, Processes())


def test_a_save_cut_short_leaves_the_previous_checkpoint_and_latest(tmp_path):
    state, _, _ = make_state(1)
    state.save(tmp_path, 2, Processes(), {})
    staging = tmp_path / ".step-4.tmp"  # what a process killed half-way through saving step 4 leaves
    staging.mkdir()
    (staging / "shared.json").write_text("{")
    assert latest_checkpoint(tmp_path) == tmp_path / "step-2"
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [2]
    state.save(tmp_path, 4, Processes(), {})  # the next save of that step starts clean
    assert latest_checkpoint(tmp_path) == tmp_path / "step-4" and not staging.exists()


def test_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    state, _, _ = make_state(1)
    for step in (1, 10, 2):
        state.save(tmp_path, step, Processes(), {})
    assert latest_checkpoint(tmp_path) == tmp_path / "step-2"  # the pointer, not the largest number
    (tmp_path / "latest").write_text("step-99\n")
    assert latest_checkpoint(tmp_path) == tmp_path / "step-10"
    (tmp_path / "latest").unlink()
    assert latest_checkpoint(tmp_path) == tmp_path / "step-10"
    assert latest_checkpoint(tmp_path / "nowhere") is None


def test_saving_a_step_again_replaces_it(tmp_path):
    state, shared, _ = make_state(1)
    state.save(tmp_path, 5, Processes(), {})
    shared.value = 2
    state.save(tmp_path, 5, Processes(), {})
    restored, again, _ = make_state(None)
    restored.load(tmp_path / "step-5", Processes())
    assert again.value == 2 and not list(tmp_path.glob(".step-5*"))


def test_prune_keeps_the_newest_and_what_latest_names(tmp_path):
    state, _, _ = make_state(1)
    for step in (3, 6, 9, 12):
        state.save(tmp_path, step, Processes(), {})
    (tmp_path / ".step-15.tmp").mkdir()
    prune(tmp_path, keep=2)
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [9, 12] and not (tmp_path / ".step-15.tmp").exists()
    (tmp_path / "latest").write_text("step-9\n")
    prune(tmp_path, keep=0)
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [9]


def test_find_checkpoint_understands_latest_auto_and_paths(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    assert find_checkpoint("auto", root) is None
    with pytest.raises(MtbertError, match="no complete checkpoint.*--resume auto"):
        find_checkpoint("latest", root)
    state, _, _ = make_state(1)
    state.save(root, 4, Processes(), {})
    assert find_checkpoint("latest", root) == find_checkpoint("auto", root) == root / "step-4"
    for spec in (root / "step-4", root, tmp_path / "run"):
        assert find_checkpoint(str(spec), root) == root / "step-4"
    with pytest.raises(MtbertError, match="no such folder"):
        find_checkpoint(str(tmp_path / "missing"), root)


def test_pickle_checkpoints_are_refused_with_a_reason(tmp_path):
    accelerate_state = tmp_path / "accelerate_state"
    accelerate_state.mkdir()
    torch.save({"weights": torch.ones(1)}, accelerate_state / "optimizer.bin")
    (accelerate_state / "random_states_0.pkl").write_bytes(b"\x80\x04N.")
    with pytest.raises(MtbertError, match="pickle files.*never unpickles"):
        find_checkpoint(str(accelerate_state), tmp_path / "checkpoints")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MtbertError, match="not an mtbert checkpoint"):
        find_checkpoint(str(tmp_path / "empty"), tmp_path / "checkpoints")


def test_a_checkpoint_from_another_format_is_refused(tmp_path):
    (tmp_path / "step-1").mkdir()
    (tmp_path / "step-1" / "state.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(MtbertError, match="not an mtbert training checkpoint"):
        TrainingState().load(tmp_path / "step-1", Processes())


def test_part_names_are_checked():
    state = TrainingState()
    state.add("stage_2", Box())
    with pytest.raises(ValueError, match="already tracked"):
        state.add("stage_2", Box())
    with pytest.raises(ValueError, match="lowercase"):
        state.add("Stage/2", Box())


# ---------------------------------------------------------------------------------------------
# Checksums: a checkpoint damaged after it was written is found, and passed over by `latest`


def saved_steps(root, *steps) -> TrainingState:
    """Checkpoints of `steps` whose parts hold tensors (each in a safetensors file) and the step."""
    state, shared, mine = make_state(None)
    for step in steps:
        shared.value = {"step": step, "weights": torch.full((4,), float(step))}
        mine.value = torch.arange(step)
        state.save(root, step, Processes(), {})
    return state


def flip_last_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_the_manifest_lists_every_file_with_its_size_and_sha256(tmp_path):
    saved_steps(tmp_path, 3)
    folder = tmp_path / "step-3"
    manifest = json.loads((folder / "state.json").read_text())
    assert manifest["version"] == 2
    assert sorted(manifest["files"]) == sorted(p.name for p in folder.iterdir() if p.name != "state.json")
    record = manifest["files"]["shared.safetensors"]
    assert record["bytes"] == (folder / "shared.safetensors").stat().st_size
    assert record["sha256"] == hashlib.sha256((folder / "shared.safetensors").read_bytes()).hexdigest()
    assert verify(folder)["step"] == 3


@pytest.mark.parametrize("damage,message", [
    (lambda f: flip_last_byte(f / "shared.safetensors"), "shared.safetensors: damaged .*SHA-256"),
    (lambda f: (f / "mine.process-0.json").write_text("{}"), r"mine.process-0.json: damaged .*\(2 bytes"),
    (lambda f: (f / "shared.json").unlink(), "shared.json: missing"),
    (lambda f: (f / "state.json").write_text("{"), "state.json: unreadable"),
])
def test_a_damaged_checkpoint_fails_verification_naming_the_file(tmp_path, damage, message):
    saved_steps(tmp_path, 3)
    damage(tmp_path / "step-3")
    with pytest.raises(MtbertError, match=message):
        verify(tmp_path / "step-3")
    with pytest.raises(MtbertError, match=f"--resume {tmp_path / 'step-3'}: .*{message}"):
        find_checkpoint(str(tmp_path / "step-3"), tmp_path)


def test_latest_falls_back_to_the_newest_checkpoint_that_verifies_saying_what_it_skipped(tmp_path):
    saved_steps(tmp_path, 2, 4, 6)
    flip_last_byte(tmp_path / "step-6" / "shared.safetensors")
    (tmp_path / "step-4" / "mine.process-0.safetensors").unlink()
    said = []
    for spec in ("latest", "auto", str(tmp_path)):
        said.clear()
        assert find_checkpoint(spec, tmp_path, say=said.append) == tmp_path / "step-2"
        assert [line.split(":")[0] for line in said] == ["skipped checkpoint step-6", "skipped checkpoint step-4"]
    restored, shared, _ = make_state(None)
    restored.load(tmp_path / "step-2", Processes())
    assert shared.value["step"] == 2


def test_when_no_checkpoint_verifies_latest_and_auto_are_errors_not_a_fresh_start(tmp_path):
    saved_steps(tmp_path, 2, 4)
    for step in (2, 4):
        flip_last_byte(tmp_path / f"step-{step}" / "shared.safetensors")
    said = []
    for spec in ("latest", "auto"):
        with pytest.raises(MtbertError, match=f"--resume {spec}: no checkpoint in .* verifies .*step-4, step-2"):
            find_checkpoint(spec, tmp_path, say=said.append)
    assert len(said) == 4


def test_a_version_1_checkpoint_without_checksums_still_resumes(tmp_path):
    saved_steps(tmp_path, 5)
    manifest_path = tmp_path / "step-5" / "state.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["files"]
    manifest_path.write_text(json.dumps(manifest | {"version": 1}))
    assert find_checkpoint("latest", tmp_path) == tmp_path / "step-5"
    (tmp_path / "step-5" / "shared.json").unlink()
    said = []
    with pytest.raises(MtbertError, match="no checkpoint .* verifies"):
        find_checkpoint("latest", tmp_path, say=said.append)
    assert len(said) == 1 and "shared.json: missing" in said[0]


def test_a_manifest_cannot_point_outside_its_folder(tmp_path):
    saved_steps(tmp_path, 1)
    manifest_path = tmp_path / "step-1" / "state.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["../secret"] = {"bytes": 0, "sha256": ""}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(MtbertError, match="malformed checkpoint manifest"):
        verify(tmp_path / "step-1")


# ---------------------------------------------------------------------------------------------
# A save that fails (a full disk) leaves the previous checkpoints and `latest` as they were


@pytest.mark.parametrize("failing", ["part", "rename"])
def test_a_full_disk_during_a_save_is_one_error_and_loses_nothing(tmp_path, monkeypatch, failing):
    state = saved_steps(tmp_path, 2)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if failing == "part":
        def save_file(*args, **kwargs):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        monkeypatch.setattr(mtbert.training.checkpoints, "save_file", save_file)
    else:
        real = os.replace

        def replace(src, dst):
            if str(dst).endswith("step-4"):
                raise full
            return real(src, dst)
        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(MtbertError, match=r"step-4: cannot write the checkpoint \(.*No space left on device"):
        state.save(tmp_path, 4, Processes(), {})
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # step-2 and latest byte for byte, no staging folder left
    assert find_checkpoint("latest", tmp_path) == tmp_path / "step-2"
