"""The ranks Lightning starts itself (``strategy=ddp|fsdp`` on one machine): none outlives or waits on a dead peer.

Lightning's subprocess launcher starts ranks 1..N-1 as children of rank 0. Left alone:
- a child whose rank 0 died waits in its next collective for the process group's timeout (30 minutes);
- rank 0 learns of a dead child only from Lightning's observer thread, which SIGKILLs it without a word;
- that observer keeps polling the job's children after the job: in a sweep, a child of job 0 that exits
  non-zero late kills the sweep process in the middle of job 1, orphaning job 1's children;
- a gloo process group left to interpreter shutdown can abort the process
  (``terminate called without an active exception``), a non-zero exit the observer then acts on.

:func:`watched` covers one ``fit``/``validate`` sequence: a watchdog thread ends a child within a second of
its rank 0 being gone, and rank 0 as soon as a child failed (stopping the other children), each with one line
on stderr (the same line at once when a collective fails first because of that death); a failure on rank 0
stops its children; at the end rank 0 waits for its children, the observer
is handed an empty list, and every rank destroys its process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import torch.distributed as dist

from sortednet.training.compat import launched_rank_processes

POLL_S = 1.0
PEER_DEATH_S = 1.0  # a dead peer's sockets close a moment before the kernel reports its death: wait that long
CHILD_EXIT_S = 120  # a finished child only tears down; one that takes longer is stuck


def _is_lightning_child() -> bool:
    """A rank Lightning's launcher started (it sets LOCAL_RANK; torchrun and SLURM set their own variables)."""
    started_by_others = ("TORCHELASTIC_RUN_ID", "SLURM_PROCID", "RANK")
    return os.environ.get("LOCAL_RANK", "0") != "0" and not any(k in os.environ for k in started_by_others)


_STOPPING = threading.Lock()  # taken by the first thread that stops the process, never released


def _stop(message: str) -> None:
    _STOPPING.acquire()  # a second caller (watchdog and main thread seeing the same death) waits for the exit
    print(f"sortednet: error: {message}", file=sys.stderr, flush=True)
    os._exit(1)  # the main thread may be blocked in a collective: end the process from here


def _kill(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)  # SIGTERM does not end a rank blocked in a collective


def _rank0_gone(parent: int) -> str:
    return f"rank {os.environ.get('LOCAL_RANK', '0')}: rank 0 (pid {parent}) is gone; stopping this rank"


def _child_failed(rank: int, process: subprocess.Popen) -> str:
    return f"rank {rank} (pid {process.pid}) exited with status {process.returncode}; stopped the other ranks"


def _wait_for(process: subprocess.Popen, rank: int, trainer, stop: threading.Event) -> None:
    # Blocks until the child ends: rank 0 hears of a failure at once, before Lightning's observer (which polls
    # every 5 s) SIGKILLs it without a word. Popen's wait lock makes the observer's poll() return None meanwhile.
    process.wait()
    if process.returncode and not stop.is_set():
        _kill(launched_rank_processes(trainer))
        _stop(_child_failed(rank, process))


def _watch(trainer, stop: threading.Event, parent: int | None) -> None:
    waited = set()
    while not stop.wait(POLL_S):
        if parent is not None and os.getppid() != parent:
            _stop(_rank0_gone(parent))
        for index, process in enumerate(launched_rank_processes(trainer), 1):  # Lightning starts them inside fit
            if process.pid not in waited:
                waited.add(process.pid)
                args = (process, index, trainer, stop)
                threading.Thread(target=_wait_for, args=args, daemon=True, name=f"sortednet-rank-{index}").start()


def _dead_peer(trainer, parent: int | None) -> str | None:
    """Why the body raised, if a peer died: rank 0 gone (seen from a child) or a child that exited non-zero.

    A collective with a dead peer fails at once ("Connection closed by peer"); the process's own traceback and
    slow teardown would then hide the cause, and the watchdog (stopped with the body) would never say it."""
    deadline = time.monotonic() + PEER_DEATH_S
    while True:
        if parent is not None and os.getppid() != parent:
            return _rank0_gone(parent)
        for index, process in enumerate(launched_rank_processes(trainer), 1):
            if process.returncode:  # set by its _wait_for thread (poll() here would return None: it holds the lock)
                return _child_failed(index, process)
        if time.monotonic() > deadline or (parent is None and not launched_rank_processes(trainer)):
            return None
        time.sleep(0.05)


@contextlib.contextmanager
def watched(trainer):
    """Run the body (``trainer.fit``/``validate``) under the watchdog described in the module docstring."""
    stop = threading.Event()
    parent = os.getppid() if _is_lightning_child() else None
    watchdog = threading.Thread(target=_watch, args=(trainer, stop, parent), daemon=True, name="sortednet-ranks")
    watchdog.start()
    try:
        yield
    except BaseException:
        dead = _dead_peer(trainer, parent)
        _kill(launched_rank_processes(trainer))  # they would wait for this rank in their next collective
        if dead:
            _stop(dead)
        raise
    finally:
        stop.set()
        watchdog.join()
        children = launched_rank_processes(trainer)
        for process in children:
            try:
                process.wait(timeout=CHILD_EXIT_S)
            except subprocess.TimeoutExpired:
                _kill([process])
        for index, process in enumerate(children, 1):
            if process.returncode:
                print(f"sortednet: warning: rank {index} exited with status {process.returncode}", file=sys.stderr)
        # Lightning's observer thread polls this very list every 5 s; empty, it ends instead of acting later
        children.clear()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
