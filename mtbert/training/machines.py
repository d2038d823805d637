"""What a run over several machines needs from each machine, checked before any data is read.

A run is on several machines when torchrun (Accelerate's launcher) started more processes in all than on
this machine (WORLD_SIZE > LOCAL_WORLD_SIZE). Then every machine's first process checks, and every process
of every machine stops with the same message if one machine fails:

* output_dir is storage every machine shares: the main process writes a probe file with a random token
  into it, and each machine must read that token back (each process writes its own part of a checkpoint,
  and resuming reads all parts from one folder);
* every file the main machine reads (each task's train and dev file, a tokenizer or model folder) exists
  here too (data_dir may differ per machine, but its files must be there);
* the cache folder (MTBERT_CACHE, else ~/.cache/mtbert) can be written: each machine tokenises its own
  copy when the cache is not shared.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from pathlib import Path

from mtbert.config import Recipe
from mtbert.data.encoding import cache_dir
from mtbert.data.reading import split_path
from mtbert.errors import MtbertError
from mtbert.tasks import resolve_tasks
from mtbert.training import launch

PROBE = ".mtbert-machines-probe"


def several_machines() -> bool:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))


def machine_name() -> str:
    return f"machine {os.environ.get('GROUP_RANK', '?')} ({socket.gethostname()})"


def needed_paths(recipe: Recipe) -> list[str]:
    """The local files and folders this run reads: each task's train and dev file, the tokenizer and the
    model it starts from when they are folders (a hub name is not a path)."""
    paths = [split_path(task, split, recipe.data_dir) for task in resolve_tasks(recipe).values()
             for split in ("train", "dev")]
    paths += [Path(name) for name in (recipe.model.tokenizer, recipe.model.init) if name and Path(name).exists()]
    return sorted({str(p) for p in paths if p is not None and p.exists()})


def write_probe(output: Path) -> str:
    """Create output_dir and leave a random token in it for the other machines to read."""
    token = secrets.token_hex(16)
    try:
        output.mkdir(parents=True, exist_ok=True)
        (output / PROBE).write_text(token, encoding="utf-8")
    except OSError as error:
        raise MtbertError(f"{output}: cannot write output_dir ({error.strerror or error})") from None
    return token


def machine_problems(output: Path, token: str, main_paths: list[str]) -> list[str]:
    """What this machine lacks of what the run needs (empty: nothing)."""
    problems = []
    try:
        seen = (output / PROBE).read_text(encoding="utf-8")
    except OSError:
        seen = None
    if seen != token:
        problems.append(f"output_dir {output} is not the folder the main process writes to; it must be on "
                        f"storage every machine shares")
    missing = [p for p in main_paths if not Path(p).exists()]
    if missing:
        problems.append(f"{len(missing)} file(s) the main machine reads are missing here, first {missing[0]} "
                        f"(copy the data to the same path, or set data_dir / --data-dir for this machine)")
    cache = cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache):
            pass
    except OSError as error:
        problems.append(f"cannot write the cache folder {cache} ({error.strerror or error}); set MTBERT_CACHE "
                        f"to a writable folder")
    return problems


def check_machines(recipe: Recipe, accelerator) -> None:
    """On a run over several machines, stop every process with one message if a machine lacks what the run
    needs; nothing otherwise. Collective: every process calls it."""
    if not several_machines():
        return
    output = Path(recipe.output_dir).absolute()
    shared = [None, None, None]
    if accelerator.is_main_process:
        try:
            shared = [write_probe(output), needed_paths(recipe), None]
        except MtbertError as error:
            shared = [None, None, str(error)]
    token, main_paths, failed = launch.from_main_process(shared)
    if failed:
        raise MtbertError(f"{failed} (on the main machine)")
    mine = machine_problems(output, token, main_paths) if accelerator.is_local_main_process else []
    found = [f"{machine_name()}: {problem}" for problem in mine]
    everyone = launch.from_every_process([found])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (output / PROBE).unlink(missing_ok=True)
    # Nobody goes on before the probe is gone: the next thing every process does is to check that output_dir
    # holds nothing but an earlier run's files, and a probe still there made another machine refuse it.
    accelerator.wait_for_everyone()
    problems = [line for lines in everyone for line in lines]
    if problems:
        raise MtbertError("this run spans several machines and " + "; ".join(problems))
