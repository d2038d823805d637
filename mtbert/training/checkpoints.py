"""Resumable checkpoints: what a checkpoint folder holds, and how it is written and read back.

A run's resumable state is a set of named parts (model, optimizer, scheduler, task streams, progress,
random states, an objective's state, ...), each an object with `state_dict()` and `load_state_dict()`
(mtbert/training/state.py gathers them; a part's name is what the folder stores it under). Parts that
differ between processes (random states, a DeepSpeed ZeRO shard) are stored once per process; the others
once, by the main process.

Every part is stored as JSON (numbers, strings, lists, maps) beside a safetensors file of its tensors:
nothing is pickled, so nothing is ever unpickled.

    <output_dir>/checkpoints/
        step-40/
            state.json                 written last: step, parts, the run's recipe and launch, and the
                                       size and SHA-256 of every other file of the folder
            model.json, model.safetensors
            optimizer.json, optimizer.safetensors
            rng.process-0.json, rng.process-0.safetensors, rng.process-1.json, ...
        step-80/
        latest                         the name of the newest complete checkpoint, replaced atomically

A checkpoint is written into `.step-N.tmp/` and renamed into place once complete, so a crash at any
moment leaves the earlier checkpoints and `latest` intact; the next save clears the leftover. A write
that fails (a full disk) removes the staging folder and is an MtbertError naming the path.

A checkpoint damaged after it was written (a changed, truncated or missing file) fails its checksums:
`--resume latest` and `auto` then fall back to the newest checkpoint that verifies, saying which they
skipped, and `--resume <folder>` names the damaged file.
This module knows nothing of Accelerate: the caller describes its processes with `Processes`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mtbert import __version__
from mtbert.errors import MtbertError
from mtbert.files import WriteError, cannot_write
from mtbert.training import faults

FORMAT = "mtbert-training-state"
VERSION = 2
"2: the manifest lists every file with its size and SHA-256. Version 1 (no checksums) is still read."
READABLE_VERSIONS = (1, 2)
MANIFEST = "state.json"
LATEST = "latest"
_STEP_FOLDER = re.compile(r"^step-(\d+)$")
_PART_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# Files that only pickle can read: the formats of Accelerate's save_state, DeepSpeed's engine and torch.save.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> Any: ...


@dataclass
class Processes:
    """The processes of a run as checkpointing sees them: who am I, how many, and a barrier."""

    index: int = 0
    count: int = 1
    barrier: Callable[[], None] = field(default=lambda: None)

    @property
    def is_main(self) -> bool:
        return self.index == 0


# ---------------------------------------------------------------------------------------------
# Plain data <-> JSON + tensors


def encode(value: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """A JSON-able copy of `value`, and the tensors (and numpy arrays) it references by key.

    Handles what state dicts hold: None, bool, int, float (also nan/inf), str, tensors, numpy arrays
    and scalars, torch dtypes, lists, tuples and dicts with any plain keys. Anything else is an error
    that names the path, so a part that stores an object fails loudly at its first save.
    """
    store = _TensorStore()
    return _encode(value, store, ""), store.tensors


def _encode(value: Any, store: _TensorStore, path: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)  # also IntEnum members, stored as their number
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, torch.Tensor):
        return {"$tensor": store.put(path, value)}
    if isinstance(value, np.ndarray):
        return {"$ndarray": store.put(path, torch.from_numpy(np.ascontiguousarray(value)))}
    if isinstance(value, np.generic):
        return {"$numpy": value.dtype.name, "value": _encode(value.item(), store, path)}
    if isinstance(value, torch.dtype):
        return {"$dtype": str(value).removeprefix("torch.")}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, store, f"{path}/{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, store, f"{path}/{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v, store, f"{path}/{k}") for k, v in value.items()}
        return {"$map": [[_encode(k, store, f"{path}/key{i}"), _encode(v, store, f"{path}/{k}")]
                         for i, (k, v) in enumerate(value.items())]}
    raise TypeError(f"{path or '/'}: cannot store a {type(value).__module__}.{type(value).__qualname__} in a "
                    f"checkpoint; a state_dict may hold tensors, numbers, strings, lists, tuples and dicts")


def decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `encode`: plain data with the tensors put back."""
    if isinstance(value, list):
        return [decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "$tensor" in value:
        return tensors[value["$tensor"]]
    if "$ndarray" in value:
        return tensors[value["$ndarray"]].numpy()
    if "$float" in value:
        return float(value["$float"])
    if "$numpy" in value:
        return np.dtype(value["$numpy"]).type(decode(value["value"], tensors))
    if "$dtype" in value:
        return getattr(torch, value["$dtype"])
    if "$tuple" in value:
        return tuple(decode(v, tensors) for v in value["$tuple"])
    if "$map" in value:
        return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in value["$map"]}
    return {k: decode(v, tensors) for k, v in value.items()}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


class _TensorStore:
    """Tensors by key, each with memory of its own (safetensors refuses tensors that share memory)."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._storages: set[int] = set()

    def put(self, path: str, tensor: torch.Tensor) -> str:
        key = path.strip("/") or "tensor"
        while key in self.tensors:
            key += "+"
        tensor = tensor.detach().cpu()
        storage = tensor.untyped_storage()
        whole = storage.nbytes() == tensor.numel() * tensor.element_size() and tensor.storage_offset() == 0
        if tensor.numel() and (not (whole and tensor.is_contiguous()) or storage.data_ptr() in self._storages):
            tensor = tensor.clone(memory_format=torch.contiguous_format)  # a view, or memory already stored
        if tensor.numel():
            self._storages.add(tensor.untyped_storage().data_ptr())
        self.tensors[key] = tensor
        return key


# ---------------------------------------------------------------------------------------------
# Checkpoint folders


class Part(NamedTuple):
    """One named part of a run's state, as a checkpoint stores it."""

    obj: Stateful
    per_process: bool
    "Every process saves and restores its own copy (random states, a ZeRO shard); else the main process's."


def check_part_name(name: str) -> None:
    if not _PART_NAME.match(name):
        raise ValueError(f"training state part name {name!r}: use lowercase letters, digits and _")


def save_checkpoint(root: str | os.PathLike[str], step: int, parts: dict[str, Part], processes: Processes,
                    info: dict) -> Path:
    """Write checkpoint `root/step-<step>` (every process must call this), update `latest`, and
    return the folder. `info` is stored in the manifest (the run's recipe and launch, for checks)."""
    root = Path(root)
    final, staging = root / f"step-{step}", root / f".step-{step}.tmp"
    if processes.is_main:
        with _writing(final, staging):
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
    processes.barrier()
    if not staging.is_dir():
        raise MtbertError(f"{staging}: process {processes.index} cannot see the folder the main process "
                          f"created; output_dir must be on storage that every process (every machine) shares")
    for name, part in parts.items():
        # Every process asks every part for its state: under ZeRO that may be a collective.
        state = part.obj.state_dict()
        if part.per_process or processes.is_main:
            with _writing(final, staging):
                _write_part(staging, _file_stem(name, part.per_process, processes.index), name, state)
    faults.during_save(step)
    processes.barrier()
    if processes.is_main:
        with _writing(final, staging):
            manifest = {"format": FORMAT, "version": VERSION, "mtbert_version": __version__, "step": step,
                        "num_processes": processes.count,
                        "parts": {name: {"per_process": part.per_process} for name, part in parts.items()},
                        "info": info,
                        # Last, over every other file (every process's): what a resume verifies.
                        "files": {path.name: _file_record(path) for path in sorted(staging.iterdir())}}
            _write_json(staging / MANIFEST, manifest)
            _fsync_folder(staging)
            _replace_folder(staging, final)
            _write_latest(root, final.name)
    processes.barrier()
    return final


def load_checkpoint(folder: str | os.PathLike[str], parts: dict[str, Part], processes: Processes) -> dict:
    """Restore every part, in order, from checkpoint `folder`; return its manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    saved = manifest["parts"]
    missing = [name for name in parts if name not in saved]
    extra = [name for name in saved if name not in parts]
    if missing or extra:
        raise MtbertError(f"{folder}: the checkpoint's state does not match this run: "
                          + "; ".join(([f"it lacks {', '.join(missing)}"] if missing else [])
                                      + ([f"it has {', '.join(extra)}, which this run does not use"]
                                         if extra else [])))
    if any(part.per_process for part in parts.values()) and manifest["num_processes"] != processes.count:
        raise MtbertError(f"{folder}: written by {manifest['num_processes']} process(es), but this run has "
                          f"{processes.count}; resume with the same launch configuration")
    for name, part in parts.items():
        part.obj.load_state_dict(_read_part(folder, _file_stem(name, part.per_process, processes.index)))
    return manifest


def _file_stem(name: str, per_process: bool, index: int) -> str:
    return f"{name}.process-{index}" if per_process else name


def _write_part(folder: Path, stem: str, name: str, state: Any) -> None:
    try:
        tree, tensors = encode(state)
    except TypeError as error:
        raise TypeError(f"training state part {name!r}: {error}") from None
    if tensors:
        path = folder / f"{stem}.safetensors"
        try:
            save_file(tensors, path, metadata={"format": "pt"})
        except SafetensorError as error:  # its I/O errors (a full disk) come as this type, not OSError
            raise cannot_write(path, error) from None
        os.chmod(path, 0o644)  # as readable as any other output
        _fsync_file(path)
    _write_json(folder / f"{stem}.json", {"tensors_file": f"{stem}.safetensors" if tensors else None,
                                         "state": tree}, indent=None)


def _read_part(folder: Path, stem: str) -> Any:
    path = folder / f"{stem}.json"
    record = _read_json(path)
    tensors = {}
    if record.get("tensors_file"):
        tensors_path = folder / record["tensors_file"]
        try:
            with safe_open(str(tensors_path), framework="pt") as f:
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except Exception as error:  # noqa: BLE001 - safetensors raises its own types for bad files
            raise MtbertError(f"{tensors_path}: unreadable checkpoint tensors ({error})") from None
    try:
        return decode(record["state"], tensors)
    except (KeyError, TypeError, ValueError) as error:
        raise MtbertError(f"{path}: malformed checkpoint state ({error!r})") from None


@contextlib.contextmanager
def _writing(final: Path, staging: Path):
    """A write of checkpoint `final` that fails (a full disk, a read-only folder) removes what it staged and
    is one MtbertError naming the checkpoint; the checkpoints before it and `latest` are untouched."""
    try:
        yield
    except (OSError, WriteError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        reason = error.reason if isinstance(error, WriteError) else error.strerror or str(error)
        raise MtbertError(f"{final}: cannot write the checkpoint ({reason}); the previous checkpoints are "
                          f"as they were") from None


def _file_record(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, data: Any, indent: int | None = 1) -> None:
    path.write_text(json.dumps(data, indent=indent, allow_nan=False) + "\n", encoding="utf-8")
    _fsync_file(path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MtbertError(f"{path}: missing from the checkpoint") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MtbertError(f"{path}: unreadable checkpoint file ({error})") from None


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_folder(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_folder(staging: Path, final: Path) -> None:
    """Rename the complete staging folder to `final`; an older folder of that name goes only after."""
    if final.exists():
        # The same step saved again (a run resumed from an earlier checkpoint replays it).
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)
    _fsync_folder(final.parent)


def _write_latest(root: Path, name: str) -> None:
    tmp = root / f".{LATEST}.tmp"
    tmp.write_text(name + "\n", encoding="utf-8")
    _fsync_file(tmp)
    os.replace(tmp, root / LATEST)
    _fsync_folder(root)


def read_manifest(folder: Path) -> dict:
    manifest = _read_json(folder / MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MtbertError(f"{folder / MANIFEST}: not an mtbert training checkpoint")
    if manifest.get("version") not in READABLE_VERSIONS:
        raise MtbertError(f"{folder / MANIFEST}: checkpoint format version {manifest.get('version')}; "
                          f"this mtbert reads version {', '.join(map(str, READABLE_VERSIONS))}")
    for key, kind in (("step", int), ("num_processes", int), ("parts", dict), ("info", dict)):
        if not isinstance(manifest.get(key), kind):
            raise MtbertError(f"{folder / MANIFEST}: malformed checkpoint manifest ({key!r} missing or wrong)")
    return manifest


def verify(folder: Path) -> dict:
    """Check checkpoint `folder` against its manifest's sizes and SHA-256s; return the manifest.

    Any difference (a file changed, truncated or missing after the checkpoint was written) is an
    MtbertError naming the file. A version-1 checkpoint has no checksums: its files are only required
    to exist."""
    manifest = read_manifest(folder)
    files = manifest.get("files")
    if manifest["version"] >= 2 and not isinstance(files, dict):
        raise MtbertError(f"{folder / MANIFEST}: malformed checkpoint manifest (no file checksums)")
    if files is None:  # version 1: at least every part is there
        for name in _part_files(manifest):
            if not (folder / name).is_file():
                raise MtbertError(f"{folder / name}: missing from the checkpoint")
    for name, record in (files or {}).items():
        path = folder / name
        if not isinstance(record, dict) or Path(name).name != name:
            raise MtbertError(f"{folder / MANIFEST}: malformed checkpoint manifest (entry {name!r})")
        if not path.is_file():
            raise MtbertError(f"{path}: missing from the checkpoint")
        size = path.stat().st_size
        if size != record.get("bytes"):
            raise MtbertError(f"{path}: damaged after the checkpoint was written ({size} bytes, it wrote "
                              f"{record.get('bytes')})")
        if _sha256(path) != record.get("sha256"):
            raise MtbertError(f"{path}: damaged after the checkpoint was written (its SHA-256 differs from "
                              f"the one in {MANIFEST})")
    return manifest


def _part_files(manifest: dict) -> list[str]:
    """The JSON file of every part (per process: one per process)."""
    names = []
    for name, spec in manifest["parts"].items():
        per_process = isinstance(spec, dict) and bool(spec.get("per_process"))
        count = manifest["num_processes"] if per_process else 1
        names += [f"{_file_stem(name, per_process, index)}.json" for index in range(count)]
    return names


def complete_checkpoints(root: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_FOLDER.match(child.name)
        if match and (child / MANIFEST).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """The checkpoint `latest` names or, if that is gone, the newest complete one; None if none."""
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        named = root / pointer.read_text(encoding="utf-8").strip()
        if _STEP_FOLDER.match(named.name) and (named / MANIFEST).is_file():
            return named
    found = complete_checkpoints(root)
    return found[-1][1] if found else None


def prune(root: str | os.PathLike[str], keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints (never the one `latest` names), and the
    staging folders of interrupted saves; return what was deleted."""
    root = Path(root)
    latest = latest_checkpoint(root)
    found = [folder for _, folder in complete_checkpoints(root)]
    doomed = [folder for folder in found[: max(0, len(found) - keep)] if folder != latest]
    doomed += [child for child in root.glob(".step-*") if child.is_dir()] if root.is_dir() else []
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)
    return doomed


def find_checkpoint(spec: str, checkpoints_root: Path, say: Callable[[str], None] = print) -> Path | None:
    """The checkpoint folder `--resume spec` means, verified against its checksums.

    spec: `latest` (the newest under checkpoints_root that verifies; an error if there is none), `auto`
    (the same, or None to start afresh when there is no checkpoint at all) or a path: a checkpoint folder
    (an error if it does not verify), a checkpoints folder or a run's output folder (its newest that
    verifies). Each damaged checkpoint passed over is said, one line each.
    """
    if spec in ("latest", "auto"):
        found = newest_verified(checkpoints_root, f"--resume {spec}", say)
        if found is None and spec == "latest":
            raise MtbertError(f"--resume latest: no complete checkpoint in {checkpoints_root} "
                              f"(use --resume auto to start afresh when there is none)")
        return found
    path = Path(spec)
    if not path.exists():
        loop = path.is_symlink()
        raise MtbertError(f"--resume {spec}: {'a symlink loop or a broken link' if loop else 'no such folder'}")
    if (path / MANIFEST).is_file():
        try:
            verify(path)
        except MtbertError as error:
            raise MtbertError(f"--resume {spec}: {error}") from None
        return path
    for root in (path, path / "checkpoints"):
        found = newest_verified(root, f"--resume {spec}", say)
        if found is not None:
            return found
    pickled = sorted(p.name for p in path.rglob("*") if p.suffix in _PICKLE_SUFFIXES)[:3] if path.is_dir() else []
    if pickled:
        raise MtbertError(f"--resume {spec}: holds pickle files ({', '.join(pickled)}), as Accelerate's save_state "
                          f"or DeepSpeed's save_checkpoint write; mtbert never unpickles a checkpoint. Resume from a "
                          f"folder mtbert train wrote (<output_dir>/checkpoints/step-N)")
    raise MtbertError(f"--resume {spec}: not an mtbert checkpoint (no {MANIFEST}, no complete step-N folder)")


def newest_verified(root: Path, option: str, say: Callable[[str], None] = print) -> Path | None:
    """The checkpoint `latest` names or, failing that, the newest step-N folder under root that verifies,
    saying which it skipped; None if root has no checkpoint folder at all. Checkpoints that all fail to
    verify are an error: starting afresh beside them would silently give up a run."""
    root = Path(root)
    if not root.is_dir():
        return None
    steps = sorted((int(m.group(1)), child) for child in root.iterdir()
                   if (m := _STEP_FOLDER.match(child.name)) and child.is_dir())
    candidates = [folder for _, folder in reversed(steps)]
    named = _named_by_latest(root)
    if named in candidates:
        candidates.remove(named)
        candidates.insert(0, named)
    skipped = []
    for folder in candidates:
        try:
            verify(folder)
            return folder
        except MtbertError as error:
            say(f"skipped checkpoint {folder.name}: {error}")
            skipped.append(folder.name)
    if skipped:
        raise MtbertError(f"{option}: no checkpoint in {root} verifies (skipped {', '.join(skipped)}); "
                          f"resume from a copy of a good one, or start afresh in a new output_dir")
    return None


def _named_by_latest(root: Path) -> Path | None:
    try:
        name = (root / LATEST).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return root / name if _STEP_FOLDER.match(name) else None
