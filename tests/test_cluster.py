"""Sweeps of multi-process jobs: the SLURM launcher config, and a local `-m` sweep with strategy=ddp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sortednet.data.embedded import make_rows
from test_train import _metrics, _ok, run_cli

CONF = Path(__file__).parents[1] / "conf"


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
    out = _ok(process)
    both = process.stdout + process.stderr
    assert both.count("Launching 2 jobs") == 1  # no rank re-ran the sweep (children inherit stdout/stderr)
    assert out.count("objective=soft, exits=[4, 8]") == 1 and out.count("objective=soft, exits=[2, 4, 6, 8]") == 1
    sweep = tmp_path / "sweep"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()  # no stray run dirs
    for job, exits in (("0", [4, 8]), ("1", [2, 4, 6, 8])):
        steps = [r for r in _metrics(sweep / job) if r["train/loss"]]
        assert len(steps) == 2  # 16 rows / (4 x 2 ranks): both ranks trained this job
        assert all(r[f"train/loss_exit_{e}"] for r in steps for e in exits)
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
