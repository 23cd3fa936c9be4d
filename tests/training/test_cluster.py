"""Multi-process runs: the SLURM launcher config, a local `-m` sweep with strategy=ddp, a dead peer, and the
validation mean that every rank must compute together."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import cli_command, cli_env, csv_metrics, run_cli, succeeded
from sortednet.embedded import make_rows

CONF = Path(__file__).parents[2] / "conf"


def test_slurm_launcher_starts_one_task_per_device():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install 'sortednet[cluster]'")
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins

    import sortednet.train  # noqa: F401  (registers the schema)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        overrides = ["hydra/launcher=slurm", "trainer=gpu", "trainer.devices=4", "+trainer.num_nodes=2"]
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        launcher = Plugins.instance()._instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    assert {k: launcher.params[k] for k in ("tasks_per_node", "gpus_per_node", "nodes")} == {
        "tasks_per_node": 4,
        "gpus_per_node": 4,
        "nodes": 2,
    }


@pytest.mark.slow
def test_local_sweep_with_ddp_runs_each_job_once_on_two_processes(tmp_path, cache_dir):
    """Lightning starts rank 1 by re-running the command line; in a sweep that would be the whole sweep.
    sortednet hands the children the job's own overrides instead: the sweep runs once, each job on 2 ranks."""
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(make_rows(24)))  # 8 held out, 16 trained on: 2 steps an epoch at 4 x 2 ranks
    overrides = [
        "exits=[4,8],[2,4,6,8]",
        "strategy=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        f"data.path={data}",
        "data.val_size=8",
        "data.batch_size=4",
        "data.eval_batch_size=8",
        "logger=csv",
        "eval.num_generate=0",
        "trainer.max_epochs=1",
    ]
    process = run_cli(tmp_path, "sweep", *overrides, multirun=True)
    out = succeeded(process)
    both = process.stdout + process.stderr
    assert both.count("Launching 2 jobs") == 1  # no rank re-ran the sweep (children inherit stdout/stderr)
    titles = [line.strip() for line in out.splitlines() if line.strip().startswith("objective=")]  # exit tables
    assert titles == ["objective=soft, exits=[4, 8]", "objective=soft, exits=[2, 4, 6, 8]"]
    sweep = tmp_path / "sweep"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()  # no stray run dirs
    for job, exits in (("0", [4, 8]), ("1", [2, 4, 6, 8])):
        steps = [r for r in csv_metrics(sweep / job) if r["train/loss"]]
        assert len(steps) == 2  # 16 rows / (4 x 2 ranks): both ranks trained this job
        assert all(r[f"train/loss_exit_{e}"] for r in steps for e in exits)
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name: state, ppid, pgrp, session, ... ([] once it is gone)."""
    with contextlib.suppress(OSError, IndexError):
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return []


def _processes(field: int, value: int) -> list[int]:
    """Live processes whose stat field ``field`` (1: parent, 3: session) is ``value``."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [pid for pid in pids if (fields := _stat(pid)) and int(fields[field]) == value and fields[0] != "Z"]


def _children_of(pid: int) -> list[int]:
    return _processes(1, pid)


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"


def _wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_a_sweep_job_whose_rank_dies_stops_all_its_ranks_with_one_line(tmp_path, cache_dir):
    """Two 2-job DDP sweeps. kill -9 of the sweep process (rank 0 of job 0) ends its child rank; kill -9 of job 0's
    child rank ends the sweep: within seconds, one line each, no rank left behind and job 1 never started
    (without sortednet.training.ranks, the survivor waits for the process group's 30-minute timeout)."""
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(make_rows(48)))  # 40 trained on at 2 x 2 ranks: 10 steps an epoch, 20 epochs
    overrides = ["exits=[4,8],[2,4,6,8]", f"data.path={data}", "strategy=ddp", "trainer.devices=2", "logger=csv"]
    overrides += ["trainer.accelerator=cpu", "data.val_size=8", "data.batch_size=2", "eval.num_generate=0"]
    overrides += ["trainer.max_epochs=20"]
    runs = {}
    for victim in ("rank0", "child"):
        err = (tmp_path / f"{victim}.err").open("w")
        runs[victim] = subprocess.Popen(
            cli_command(tmp_path, victim, *overrides, multirun=True), cwd=tmp_path, env=cli_env(tmp_path),
            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
        )  # fmt: skip
    try:
        for victim, process in runs.items():  # both ranks of job 0 train once its first checkpoint is written
            last = tmp_path / victim / "0" / "checkpoints" / "last.ckpt"
            started = _wait_until(last.exists, 900)
            assert started and process.poll() is None, (tmp_path / f"{victim}.err").read_text()[-3000:]
        for victim, process in runs.items():
            (child,) = _children_of(process.pid)
            os.kill(process.pid if victim == "rank0" else child, signal.SIGKILL)
            survivor = child if victim == "rank0" else process.pid
            assert _wait_until(lambda pid=survivor: not _alive(pid), 20), f"{victim} killed, the other rank still runs"
            err = (tmp_path / f"{victim}.err").read_text()
            if victim == "rank0":
                expected = f"sortednet: error: rank 1: rank 0 (pid {process.pid}) is gone; stopping this rank"
            else:
                assert process.wait(timeout=10) == 1
                expected = f"sortednet: error: rank 1 (pid {child}) exited with status -9; stopped the other ranks"
            assert expected in err.splitlines(), err[-3000:]
            assert not _processes(3, process.pid), f"{victim} killed: processes of the sweep remain"
            assert not (tmp_path / victim / "1").exists()  # the sweep stopped with its failed job
    finally:
        for process in runs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def _validation_end_on_rank(rank: int, port: int, queue) -> None:
    """SortedModule.on_validation_epoch_end on one of 2 gloo ranks; only rank 0 saw label tokens."""
    from types import SimpleNamespace

    import torch
    import torch.distributed as dist
    from torchmetrics import MeanMetric

    from sortednet.training.module import SortedModule

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)

    def reduce(tensor, reduce_op):
        dist.all_reduce(tensor)
        return tensor

    logged = {}
    stub = SimpleNamespace(
        eval_exits=[2, 4],
        device=torch.device("cpu"),
        val_loss={"2": MeanMetric(), "4": MeanMetric()},
        val_accept={"2": MeanMetric()},  # agreement with the last exit: exits below it only
        val_agree={"2": MeanMetric()},
        trainer=SimpleNamespace(world_size=2, strategy=SimpleNamespace(reduce=reduce)),
        log=lambda key, value, **_: logged.__setitem__(key, float(value)),
    )
    stub._compute = lambda metric: SortedModule._compute(stub, metric)
    if rank == 0:
        stub.val_loss["2"].update(torch.tensor(2.0), weight=3)
        stub.val_loss["4"].update(torch.tensor(1.0), weight=3)
        stub.val_accept["2"].update(torch.tensor(0.25), weight=3)
        stub.val_agree["2"].update(torch.tensor(0.5), weight=3)
    SortedModule.on_validation_epoch_end(stub)
    queue.put((rank, logged))
    dist.destroy_process_group()


@pytest.mark.slow
def test_validation_end_is_collective_when_one_rank_had_no_label_tokens():
    """The per-exit val mean syncs over ranks: a rank with nothing to add joins the sync instead of leaving its
    peers waiting in it (the process group's 30-minute timeout)."""
    import multiprocessing
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    ranks = [context.Process(target=_validation_end_on_rank, args=(r, port, queue)) for r in (0, 1)]
    for process in ranks:
        process.start()
    try:
        results = dict(queue.get(timeout=120) for _ in ranks)
    finally:
        for process in ranks:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    for rank in (0, 1):
        assert results[rank]["val/loss_exit_2"] == pytest.approx(2.0)
        assert results[rank]["val/loss"] == results[rank]["val/loss_exit_4"] == pytest.approx(1.0)
        assert results[rank]["val/accept_exit_2"] == pytest.approx(0.25)
        assert results[rank]["val/agree_exit_2"] == pytest.approx(0.5)
