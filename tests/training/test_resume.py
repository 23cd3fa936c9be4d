"""Exact resume: a run killed with SIGKILL and resumed from its last checkpoint — taken mid-epoch or at an
epoch's end — logs the same per-step losses and ends with the same weights as the run that was never stopped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from conftest import cli_command, cli_env, csv_metrics, run_cli, succeeded
from sortednet.embedded import make_rows
from sortednet.errors import SortedNetError
from sortednet.training.datamodule import GlobalOrderSampler

# 32 train rows at batch 8: 4 steps an epoch; the cpu trainer validates (and writes last.ckpt) after steps 2 and
# 4 of every epoch (trainer.val_check_interval=0.5), so the killed run leaves checkpoints of both kinds.
SETTINGS = ["logger=csv", "eval.num_generate=0", "data.val_size=16", "data.batch_size=8", "data.eval_batch_size=8"]
STEPS_PER_EPOCH = 4


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(make_rows(48)))
    return path


def _snapshot_until(process: subprocess.Popen, last: Path, out: Path, step: int, timeout: float) -> dict[int, Path]:
    """Copy ``last`` each time the run replaces it (saves are atomic renames) until it holds ``step``;
    the copies by global step."""
    snapshots: dict[int, Path] = {}
    seen = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            stat = last.stat()
        except FileNotFoundError:
            stat = None
        if stat is not None and (stat.st_ino, stat.st_mtime_ns) != seen:
            seen = (stat.st_ino, stat.st_mtime_ns)
            copy = out / f"snapshot-{len(snapshots)}.ckpt"
            shutil.copyfile(last, copy)
            saved = torch.load(copy, map_location="cpu", weights_only=True)["global_step"]
            snapshots[saved] = copy
            if saved >= step:
                break
        time.sleep(0.02)
    return snapshots


def _losses(run_dir: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["train/loss"]) for r in csv_metrics(run_dir) if r["train/loss"]}


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    path = run_dir / "checkpoints" / "last.ckpt"
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_a_killed_run_resumes_exactly_mid_epoch_and_at_epoch_end(tmp_path, cache_dir, data_file):
    common = [f"data.path={data_file}", *SETTINGS, "trainer.max_epochs=2"]
    full = subprocess.Popen(  # the uninterrupted run, alongside the one that gets killed
        cli_command(tmp_path, "full", *common), cwd=tmp_path, env=cli_env(tmp_path), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "full.err").open("w"),
    )  # fmt: skip
    killed = subprocess.Popen(
        cli_command(tmp_path, "killed", *common), cwd=tmp_path, env=cli_env(tmp_path), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
        snapshots = _snapshot_until(killed, last, tmp_path, STEPS_PER_EPOCH, timeout=900)
        assert killed.poll() is None, "the run ended before it could be killed"
        os.killpg(killed.pid, signal.SIGKILL)  # kill -9, mid-training: no handler, no final save
        assert killed.wait(timeout=30) == -signal.SIGKILL
        assert full.wait(timeout=900) == 0, (tmp_path / "full.err").read_text()[-3000:]
    finally:
        for process in (full, killed):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
    mid = min(s for s in snapshots if s % STEPS_PER_EPOCH)
    assert STEPS_PER_EPOCH in snapshots and 0 < mid < STEPS_PER_EPOCH
    earlier = {p: p.read_bytes() for p in (tmp_path / "killed").rglob("*") if p.is_file()}

    # mid-epoch: into the killed run's own directory (its files stay; this run writes killed/resume-1)
    resumes = [("killed", snapshots[mid]), ("from_epoch_end", snapshots[STEPS_PER_EPOCH])]
    with ThreadPoolExecutor(len(resumes)) as pool:  # both at once: each its own process group and timeout
        for process in pool.map(lambda r: run_cli(tmp_path, r[0], *common, f"ckpt_path={r[1]}"), resumes):
            succeeded(process)
    assert {p: p.read_bytes() for p in earlier} == earlier

    reference, final = _losses(tmp_path / "full"), _weights(tmp_path / "full")
    assert sorted(reference) == list(range(2 * STEPS_PER_EPOCH))
    for run_dir, start in ((tmp_path / "killed" / "resume-1", mid), (tmp_path / "from_epoch_end", STEPS_PER_EPOCH)):
        resumed = _losses(run_dir)
        assert sorted(resumed) == list(range(start, 2 * STEPS_PER_EPOCH))
        for step, loss in resumed.items():
            assert loss == pytest.approx(reference[step], rel=0, abs=1e-6), f"step {step} of {run_dir.name}"
        weights = _weights(run_dir)
        assert weights.keys() == final.keys()
        for key, value in weights.items():
            torch.testing.assert_close(value, final[key], rtol=0, atol=1e-6)


def _epoch(size: int, batch: int, world: int, epoch: int, seed: int = 7, consumed: int = 0) -> list[list[list[int]]]:
    """Per global micro-batch, each rank's rows."""
    samplers = [GlobalOrderSampler(size, batch, world, rank, seed) for rank in range(world)]
    for sampler in samplers:
        sampler.set_epoch(epoch)
        sampler.consumed = consumed
    shares = [list(sampler) for sampler in samplers]
    batches, start = [], [0] * world
    while start[0] < len(shares[0]):
        step = []
        for rank, rows in enumerate(shares):
            size_ = len(rows[start[rank] :][:batch])
            step.append(rows[start[rank] : start[rank] + size_])
            start[rank] += size_
        batches.append(step)
    return batches


@pytest.mark.parametrize("epoch", [0, 1])
def test_the_global_batches_are_the_same_for_one_and_n_ranks(epoch):
    """Same global batch size, 1, 2 or 4 ranks: the same rows in every global micro-batch, none twice."""
    one = [sorted(step[0]) for step in _epoch(45, 8, 1, epoch)]
    for world, batch in ((2, 4), (4, 2)):
        many = _epoch(45, batch, world, epoch)
        assert [sorted(r for rank in step for r in rank) for step in many] == one
        assert all(len({len(rank) for rank in step}) == 1 for step in many[:-1])  # equal shares but the last
    assert sorted(r for step in one for r in step) == list(range(45))  # 45 = 5 x 8 + 5: the tail is trained too
    assert one != [sorted(step[0]) for step in _epoch(45, 8, 1, epoch + 1)]  # a new order each epoch


def test_the_position_resumes_on_any_world_size_and_len_is_the_whole_epoch():
    full = [r for step in _epoch(40, 4, 2, 0) for rank in step for r in rank]
    sampler = GlobalOrderSampler(40, 4, world_size=2, rank=0, seed=7)
    for _ in range(3):
        sampler.advance()  # three global micro-batches of 8 rows trained
    resumed = GlobalOrderSampler(40, 8, world_size=1, rank=0, seed=7)
    resumed.load_state_dict(sampler.state_dict())
    assert list(resumed) == full[24:]  # one rank picks up at row 24 of the same order
    assert len(resumed) == 40  # Lightning counts a resumed epoch's batches against the whole epoch
    resumed.set_epoch(1)
    assert resumed.consumed == 0
    with pytest.raises(SortedNetError, match="data.val_size"):
        GlobalOrderSampler(41, 8, seed=7).load_state_dict(sampler.state_dict())
