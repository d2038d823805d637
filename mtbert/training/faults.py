"""Test-only fault injection: make a training run fail at a chosen point, so tests can prove that a
killed, stopped or diverging run behaves as documented. Without MTBERT_TEST_FAULT (always, outside
the tests) every hook here does nothing.

    MTBERT_TEST_FAULT=kill_after_step:4       SIGKILL this process once step 4 is done (and saved, if due)
    MTBERT_TEST_FAULT=kill_during_save:6      SIGKILL it half-way through writing the step-6 checkpoint
    MTBERT_TEST_FAULT=sigterm_after_step:4    send it SIGTERM once step 4 is done
    MTBERT_TEST_FAULT=nan_loss_at_step:5      make step 5's loss NaN
    MTBERT_TEST_FAULT=nan_loss_at_step:5@1    ... on process 1 only (any fault takes @PROCESS)
    MTBERT_TEST_FAULT=pause_each_step:100     sleep 100 ms after every step (time for a test to signal a run)

Several faults are separated by commas. Steps count optimizer steps from 1, as the logs do.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "MTBERT_TEST_FAULT"
KINDS = ("kill_after_step", "kill_during_save", "sigterm_after_step", "nan_loss_at_step", "pause_each_step")

_faults: dict[str, int] = {}


def arm(process_index: int = 0) -> None:
    """Read MTBERT_TEST_FAULT for this process (called once when a run starts)."""
    _faults.clear()
    spec = os.environ.get(ENV, "").strip()
    for item in filter(None, (part.strip() for part in spec.split(","))):
        kind, _, rest = item.partition(":")
        step, _, process = rest.partition("@")
        if kind not in KINDS or not step.isdigit() or (process and not process.isdigit()):
            raise ValueError(f"{ENV}: cannot read {item!r}; expected KIND:STEP[@PROCESS] with KIND one of "
                             f"{', '.join(KINDS)}")
        if not process or int(process) == process_index:
            _faults[kind] = int(step)


def after_step(step: int) -> None:
    if "pause_each_step" in _faults:
        time.sleep(_faults["pause_each_step"] / 1000)
    if _faults.get("kill_after_step") == step:
        os.kill(os.getpid(), signal.SIGKILL)
    if _faults.get("sigterm_after_step") == step:
        os.kill(os.getpid(), signal.SIGTERM)


def during_save(step: int) -> None:
    if _faults.get("kill_during_save") == step:
        os.kill(os.getpid(), signal.SIGKILL)


def loss(step: int, value):
    """`value` (a tensor, or a tuple of them such as an objective's TaskLoss) times NaN at the chosen step."""
    if _faults.get("nan_loss_at_step") != step:
        return value
    if isinstance(value, tuple):
        return type(value)(*(v * float("nan") for v in value))
    return value * float("nan")
