"""What stops a run or a step (mtbert/training/guards.py): the non-finite guard, the stop vote across
processes, and the signals that ask a run to stop."""

import os
import signal
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mtbert.errors import MtbertError
from mtbert.training.guards import NonFiniteGuard, StopSignals, StopVote, TrainingInterrupted

NAN, INF, ONE = torch.tensor(float("nan")), torch.tensor(float("inf")), torch.tensor(1.0)


def test_the_guard_keeps_the_earliest_step_and_every_task_of_it():
    guard = NonFiniteGuard(["a", "b", "c"], torch.device("cpu"), distributed=False)
    nan, one = torch.tensor(float("nan")), torch.tensor(1.0)
    assert guard.found() is None
    guard.observe(5, "c", nan)
    guard.observe(5, "a", one)
    guard.observe(6, "a", nan)  # later: not the first
    assert guard.found() == (5, ["c"])
    guard.observe(5, "b", torch.tensor(float("inf")))
    guard.observe_gradients(5, nan)
    assert guard.found() == (5, ["b", "c"])
    guard.observe(4, "a", nan)  # an earlier step, seen later (another process's, say)
    assert guard.found() == (4, ["a"])
    guard.reset()
    guard.observe_gradients(7, torch.tensor(float("inf")))
    assert guard.found() == (7, []) and "gradients" in NonFiniteGuard.describe([])


def test_the_guard_stops_naming_the_step_its_tasks_and_the_way_back(tmp_path):
    guard = NonFiniteGuard(["sst", "sts"], torch.device("cpu"), distributed=False)
    guard.stop_if_found(tmp_path / "step-3")  # nothing seen: goes on
    guard.observe(5, "sts", INF)
    guard.observe(5, "sst", NAN)
    with pytest.raises(MtbertError, match=r"^non-finite loss on tasks sst, sts at step 5; training stopped, the "
                                          r"last good checkpoint is .*step-3 \(continue from it with --resume latest"):
        guard.stop_if_found(tmp_path / "step-3")
    with pytest.raises(MtbertError, match="no checkpoint was saved before it"):
        guard.stop_if_found(None)
    guard.reset()
    guard.observe_gradients(2, NAN)
    with pytest.raises(MtbertError, match=r"^non-finite gradients \(every task's loss was finite\) at step 2"):
        guard.stop_if_found(None)


def test_the_guard_watches_without_syncing_the_host():
    """observe() writes into a tensor where the loss lives; nothing is read back until found()."""
    guard = NonFiniteGuard(["a"], torch.device("cpu"), distributed=False)
    loss = torch.tensor(float("nan"), requires_grad=True) * 2
    guard.observe(3, "a", loss)
    assert guard.first.requires_grad is False and guard.first.tolist() == [3, NonFiniteGuard.NONE]


def test_one_process_votes_alone():
    vote = StopVote(num_processes=1)
    assert vote.group is None
    assert vote.agree(None) == 0 and vote.agree(signal.SIGTERM) == signal.SIGTERM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        vote = StopVote(num_processes=2)
        # Only process 1 got SIGTERM: both stop at this step, for it.
        stop = vote.agree(signal.SIGTERM if rank == 1 else None)
        guard = NonFiniteGuard(["a", "b"], torch.device("cpu"), distributed=True)
        guard.observe(7 if rank == 0 else 4, "a" if rank == 0 else "b", NAN)  # each saw another step
        results[rank] = (stop, guard.found())
    finally:
        dist.destroy_process_group()


def test_processes_agree_on_the_signal_and_on_the_earliest_non_finite_step():
    results = mp.Manager().dict()
    mp.spawn(_two_processes, args=(_free_port(), results), nprocs=2)
    assert dict(results) == {0: (signal.SIGTERM, (4, ["b"])), 1: (signal.SIGTERM, (4, ["b"]))}


def test_stop_signals_turn_sigterm_into_a_request_then_restore_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # a first SIGINT after SIGTERM is just another request
        assert signals.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_sigint_interrupts_at_once():
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_training_interrupted_exits_with_the_shell_code_of_the_signal(tmp_path):
    stopped = TrainingInterrupted(signal.SIGTERM, 40, tmp_path / "step-40")
    assert stopped.exit_code == 143 and "SIGTERM after step 40" in str(stopped) and "--resume latest" in str(stopped)
    assert TrainingInterrupted(signal.SIGINT, 1, tmp_path).exit_code == 130
