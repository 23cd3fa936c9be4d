"""`python -m sortednet.train` as a user runs it: end to end, resume, the baselines, logging, bad input."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import save_tiny
from sortednet.data.embedded import make_rows

TIMEOUT_S = 900  # generous: CI machines and this one are often shared; a hang still ends
SMALL = ["data.val_size=8", "data.batch_size=8", "data.eval_batch_size=8", "eval.num_generate=4"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """48 embedded rows: 5 train steps per epoch at batch 8."""
    path = tmp_path_factory.mktemp("data") / "small.json"
    path.write_text(json.dumps(make_rows(48)))
    return path


def cli_env(tmp_path: Path, env: dict | None = None) -> dict:
    """The environment of a CLI run in ``tmp_path``: HOME there too, so no W&B credentials leak in."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    environment.update(HOME=str(tmp_path), WANDB_SILENT="true", **(env or {}))
    return environment


def cli_command(tmp_path: Path, run: str, *overrides: str, multirun: bool = False) -> list[str]:
    args = [sys.executable, "-m", "sortednet.train", *(["-m"] if multirun else [])]
    return [*args, f"hydra.run.dir={tmp_path / run}", f"hydra.sweep.dir={tmp_path / run}", *overrides]


def run_cli(tmp_path: Path, run: str, *overrides: str, env: dict | None = None, multirun: bool = False):
    """Run the CLI in ``tmp_path``; return the completed process. The CLI and every rank it starts share a new
    process group, killed as a whole if it outlives ``TIMEOUT_S`` (a stuck rank must not hang the suite)."""
    process = subprocess.Popen(
        cli_command(tmp_path, run, *overrides, multirun=multirun),
        cwd=tmp_path,
        env=cli_env(tmp_path, env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"the CLI ran past {TIMEOUT_S} s and was killed; stderr ends: {stderr[-2000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):  # ranks left behind by a CLI that died
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _ok(process) -> str:
    assert process.returncode == 0, process.stderr[-3000:]
    return process.stdout


def _metrics(run_dir: Path) -> list[dict]:
    return list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))


def _ckpt(run_dir: Path, name: str = "last.ckpt") -> dict:
    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)


def test_soft_run_end_to_end(tmp_path, cache_dir, data_file):
    throughput = ["throughput.window=2", "throughput.peak_tflops=1"]
    out = _ok(
        run_cli(tmp_path, "soft", f"data.path={data_file}", "logger=csv", "trainer.max_epochs=2", *throughput, *SMALL)
    )
    header = next(line for line in out.splitlines() if "exact_match" in line).split()
    assert header == ["exit", "layers", "params_M", "val_loss", "val_ppl", "exact_match"]
    table = [line.split() for line in out.splitlines() if line.split()[:1] in (["2"], ["4"], ["6"], ["8"])]
    assert [row[0] for row in table] == ["2", "4", "6", "8"]
    assert "checkpoint:" in out and "run dir:" in out and "logs:" in out

    run_dir = tmp_path / "soft"
    steps = [r for r in _metrics(run_dir) if r["train/loss"]]
    assert len(steps) == 10  # 5 steps x 2 epochs, each one logged with every exit's loss
    assert all(r[f"train/loss_exit_{e}"] for r in steps for e in (2, 4, 6, 8))
    assert any(r["val/loss_exit_4"] for r in _metrics(run_dir))
    rates = [r for r in steps if r["train/tokens_per_s"]]
    assert len(rates) >= 8  # from the second step on (window of 2)
    for r in rates:
        assert 0 < float(r["train/response_tokens_per_s"]) < float(r["train/tokens_per_s"])
        assert float(r["train/mfu"]) == pytest.approx(float(r["train/tflops_per_s"]), rel=1e-6)  # peak = 1 TFLOP/s
    meta = _ckpt(run_dir)["sortednet"]
    assert meta["exits"] == [2, 4, 6, 8] and meta["objective"] == "soft" and meta["num_layers"] == 8
    assert meta["prompt_style"] == "alpaca"
    assert any(p.name.startswith("step") for p in (run_dir / "checkpoints").iterdir())  # best by val/loss


def test_resume_restores_step_optimizer_and_schedule(tmp_path, cache_dir, data_file):
    common = [f"data.path={data_file}", "logger=csv", "eval.num_generate=0", *SMALL[:3]]
    _ok(run_cli(tmp_path, "first", *common, "trainer.max_epochs=1"))
    first = _ckpt(tmp_path / "first")
    assert first["global_step"] == 5
    _ok(
        run_cli(
            tmp_path,
            "resumed",
            *common,
            "trainer.max_epochs=2",
            f"ckpt_path={tmp_path}/first/checkpoints/last.ckpt",
        )
    )
    resumed = _ckpt(tmp_path / "resumed")
    assert resumed["global_step"] == 10 and resumed["epoch"] == 2
    assert resumed["lr_schedulers"][0]["last_epoch"] == 10
    assert all(state["step"] == 10 for state in resumed["optimizer_states"][0]["state"].values())
    # the resumed run logged steps 5..9 only: it continued, it did not start over
    assert sorted({int(r["step"]) for r in _metrics(tmp_path / "resumed") if r["train/loss"]}) == list(range(5, 10))


def test_sft_then_ict_then_extracted(tmp_path, cache_dir, data_file):
    common = [f"data.path={data_file}", "logger=csv", "trainer.max_epochs=1", *SMALL]
    out = _ok(run_cli(tmp_path, "sft", *common, "objective=sft"))
    assert "objective=sft, exits=[2, 4, 6, 8]" in out  # trained at 8, reported at every exit
    sft = _ckpt(tmp_path / "sft")
    assert [int(r["step"]) for r in _metrics(tmp_path / "sft") if r.get("train/loss_exit_8")]
    assert not any(r.get("train/loss_exit_4") for r in _metrics(tmp_path / "sft"))

    _ok(
        run_cli(
            tmp_path,
            "ict",
            *common,
            "objective=ict",
            f"objective.init_from={tmp_path}/sft/checkpoints/last.ckpt",
        )
    )
    ict = _ckpt(tmp_path / "ict")
    assert ict["sortednet"]["exit_heads"] == [2, 4, 6]
    for key, value in sft["state_dict"].items():  # the SFT model is frozen, exit 8 keeps its head
        torch.testing.assert_close(ict["state_dict"][key], value, rtol=0, atol=0)
    shared = sft["state_dict"]["net.lm.lm_head.weight"]
    for e in (2, 4, 6):
        assert not torch.equal(ict["state_dict"][f"net.exit_heads.{e}.weight"], shared)

    out = _ok(run_cli(tmp_path, "extracted", *common, "objective=extracted"))
    meta = _ckpt(tmp_path / "extracted")["sortednet"]
    assert (meta["num_layers"], meta["exits"]) == (4, [4])
    assert "exits=[4]" in out


def test_any_local_checkpoint_and_jsonl_file(tmp_path, cache_dir, embedded_root, tokenizer, data_file):
    """A user's own model directory (here a tiny Mistral) with a separate tokenizer and a .jsonl data file."""
    model_dir = save_tiny("mistral", tmp_path / "mistral", vocab_size=len(tokenizer))
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps(row) for row in json.loads(data_file.read_text())))
    out = _ok(
        run_cli(
            tmp_path,
            "own",
            f"model.name_or_path={model_dir}",
            f"model.tokenizer={embedded_root / 'tokenizer'}",
            f"data.path={jsonl}",
            "exits=[2,4]",
            "logger=csv",
            "trainer.max_epochs=1",
            *SMALL,
        )
    )
    assert "objective=soft, exits=[2, 4]" in out
    assert _ckpt(tmp_path / "own")["sortednet"]["hf_config"]["model_type"] == "mistral"


def test_wandb_logs_offline_without_credentials(tmp_path, cache_dir, data_file):
    out = _ok(run_cli(tmp_path, "wb", f"data.path={data_file}", "trainer.max_epochs=1", *SMALL))
    offline_runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert f"wandb sync {offline_runs[0]}" in out


@pytest.mark.slow
def test_multirun_over_exit_sets_gives_one_wandb_run_per_job(tmp_path, cache_dir, data_file):
    out = _ok(
        run_cli(
            tmp_path,
            "sweep",
            "exits=[4,8],[2,4,6,8]",
            f"data.path={data_file}",
            "trainer.max_epochs=1",
            *SMALL,
            multirun=True,
        )
    )
    assert "exits=[4, 8]" in out and "exits=[2, 4, 6, 8]" in out
    runs = [sorted((tmp_path / "sweep" / str(job) / "wandb").glob("offline-run-*")) for job in (0, 1)]
    assert [len(r) for r in runs] == [1, 1] and runs[0] != runs[1]
    assert out.count("wandb sync") == 2 and out.count("group sweep-") == 2
