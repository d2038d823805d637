"""`mtbert bench-startup`: how long `mtbert train` takes to reach its first optimizer step, and the peak memory
of that process, with an empty (cold) and then a filled (warm) cache.

Each run is a fresh `python -m mtbert train RECIPE train.log_every=1 ...` process with MTBERT_CACHE set to a
folder of this benchmark's own: the cold run starts with it empty (the task files are read and tokenised),
the warm run finds what the cold run stored. The time is from starting the process to the moment its
train_log.jsonl holds step 1's record (polled every 20 ms, so up to 20 ms late); the process is then
killed, and its peak resident set size is what the kernel reports for it (os.wait4's ru_maxrss, which
counts memory-mapped pages it touched as well); at step 1 the resident memory is also read split into
private memory and mapped-file pages (/proc/PID/status), which tells growth of the process's own memory
from cache pages the operating system shares and can evict. One process: several-process runs start the same way,
each process mapping the same cache files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mtbert.config import load_recipe
from mtbert.errors import MtbertError

POLL_S = 0.02


def _first_step_logged(log: Path) -> bool:
    try:
        lines = log.read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    return any('"loss' in line and json.loads(line).get("step") == 1 for line in lines if line.endswith("}"))


def time_to_first_step(recipe: Path, overrides: list[str], cache: Path, output: Path, limit_s: float) -> dict:
    """One run: wall seconds to step 1, the CPU seconds the process used until it was stopped (less
    sensitive to other work on shared cores), and its peak RSS in MiB."""
    shutil.rmtree(output, ignore_errors=True)
    env = dict(os.environ, MTBERT_CACHE=str(cache), TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "mtbert", "train", str(recipe), *overrides, "train.log_every=1",
               f"output_dir={output}"]
    errors = output.parent / "startup-stderr.txt"
    with open(errors, "w+", encoding="utf-8") as stderr:
        start = time.perf_counter()
        child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        seconds, ended = None, 0
        while not ended and time.perf_counter() - start < limit_s:
            ended, status, usage = os.wait4(child.pid, os.WNOHANG)
            if not ended and _first_step_logged(output / "train_log.jsonl"):
                seconds = time.perf_counter() - start
                resident = _resident(child.pid)
                break
            time.sleep(POLL_S)
        if not ended:
            child.send_signal(signal.SIGKILL)
            _, status, usage = os.wait4(child.pid, 0)
        child.returncode = status  # reaped here: Popen must not wait for it again
        if seconds is None:
            stderr.seek(0)
            raise MtbertError(f"mtbert train did not reach step 1 within {limit_s:.0f} s: "
                              f"{stderr.read()[-1500:].strip()}")
    return {"seconds_to_first_step": round(seconds, 2), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), **resident}


def _resident(pid: int) -> dict:
    """The process's resident memory at its first step, split as Linux reports it: private memory (RssAnon:
    the heap, tensors, Python objects) and pages of files (RssFile: shared libraries, and the memory-mapped
    cache pages it has touched, which the page cache holds once for every process and can drop at will).
    Empty where /proc is missing (macOS)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        return {"rss_anon_mib": round(int(fields["RssAnon"].split()[0]) / 1024, 1),
                "rss_file_mib": round(int(fields["RssFile"].split()[0]) / 1024, 1)}
    except (OSError, KeyError, ValueError):
        return {}


def run(recipe: Path, overrides: list[str], *, limit_s: float = 1800, echo=print) -> dict:
    tasks = len(load_recipe(recipe, overrides).tasks)  # a recipe that cannot load fails here, in one line
    with tempfile.TemporaryDirectory(prefix="mtbert-startup-") as scratch:
        cache, output = Path(scratch) / "cache", Path(scratch) / "run"
        result = {"recipe": str(recipe), "overrides": overrides, "tasks": tasks}
        for phase in ("cold", "warm"):
            result[phase] = time_to_first_step(recipe, overrides, cache, output, limit_s)
            figures = result[phase]
            split = (f" (at step 1: {figures['rss_anon_mib']} MiB private, {figures['rss_file_mib']} MiB of "
                     f"mapped files)" if "rss_anon_mib" in figures else "")
            echo(f"{phase}: {figures['seconds_to_first_step']} s to the first optimizer step "
                 f"({figures['cpu_seconds']} CPU s), peak RSS {figures['peak_rss_mib']} MiB{split}")
    echo(json.dumps(result))
    return result
