"""`python -m sortednet.train` as a user runs it: end to end, resume, the baselines, logging, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import csv_metrics, run_checkpoint, run_cli, save_tiny, succeeded
from sortednet.embedded import make_rows

SMALL = ["data.val_size=8", "data.batch_size=8", "data.eval_batch_size=8", "eval.num_generate=4"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """48 embedded rows: 5 train steps per epoch at batch 8."""
    path = tmp_path_factory.mktemp("data") / "small.json"
    path.write_text(json.dumps(make_rows(48)))
    return path


def test_soft_run_end_to_end(tmp_path, cache_dir, data_file):
    throughput = ["throughput.window=2", "throughput.peak_tflops=1"]
    out = succeeded(
        run_cli(tmp_path, "soft", f"data.path={data_file}", "logger=csv", "trainer.max_epochs=2", *throughput, *SMALL)
    )
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in out.splitlines() if line[:1] == "|"]
    header = next(row for row in cells if "exact_match" in row)
    assert header == ["exit", "layers", "params_M", "val_loss", "val_ppl", "accept", "agree", "exact_match"]
    table = [row for row in cells if row[0] in ("2", "4", "6", "8")]
    assert [row[0] for row in table] == ["2", "4", "6", "8"]
    assert table[-1][5:7] == ["1.000", "1.000"]  # the last exit agrees with itself
    assert all(0 <= float(row[5]) <= 1 and 0 <= float(row[6]) <= 1 for row in table)
    assert "checkpoint:" in out and "run dir:" in out and "logs:" in out

    run_dir = tmp_path / "soft"
    steps = [r for r in csv_metrics(run_dir) if r["train/loss"]]
    assert len(steps) == 10  # 5 steps x 2 epochs, each one logged with every exit's loss
    assert all(r[f"train/loss_exit_{e}"] for r in steps for e in (2, 4, 6, 8))
    assert any(r["val/loss_exit_4"] for r in csv_metrics(run_dir))
    agreement = [r for r in csv_metrics(run_dir) if r["val/accept_exit_4"]]
    assert agreement and all(0 < float(r["val/accept_exit_4"]) <= 1 for r in agreement)
    assert all(0 <= float(r["val/agree_exit_2"]) <= 1 for r in agreement)
    assert not any(r.get("val/accept_exit_8") for r in csv_metrics(run_dir))  # the last exit is the reference
    rates = [r for r in steps if r["train/tokens_per_s"]]
    assert len(rates) >= 8  # from the second step on (window of 2)
    for r in rates:
        assert 0 < float(r["train/response_tokens_per_s"]) < float(r["train/tokens_per_s"])
        assert float(r["train/mfu"]) == pytest.approx(float(r["train/tflops_per_s"]), rel=1e-6)  # peak = 1 TFLOP/s
    meta = run_checkpoint(run_dir)["sortednet"]
    assert meta["exits"] == [2, 4, 6, 8] and meta["objective"] == "soft" and meta["num_layers"] == 8
    assert meta["prompt_style"] == "alpaca"
    assert any(p.name.startswith("step") for p in (run_dir / "checkpoints").iterdir())  # best by val/loss


@pytest.mark.slow
def test_resume_restores_step_optimizer_and_schedule(tmp_path, cache_dir, data_file):
    common = [f"data.path={data_file}", "logger=csv", "eval.num_generate=0", *SMALL[:3]]
    succeeded(run_cli(tmp_path, "first", *common, "trainer.max_epochs=1"))
    first = run_checkpoint(tmp_path / "first")
    assert first["global_step"] == 5
    succeeded(
        run_cli(
            tmp_path,
            "resumed",
            *common,
            "trainer.max_epochs=2",
            f"ckpt_path={tmp_path}/first/checkpoints/last.ckpt",
        )
    )
    resumed = run_checkpoint(tmp_path / "resumed")
    assert resumed["global_step"] == 10 and resumed["epoch"] == 2
    assert resumed["lr_schedulers"][0]["last_epoch"] == 10
    assert all(state["step"] == 10 for state in resumed["optimizer_states"][0]["state"].values())
    # the resumed run logged steps 5..9 only: it continued, it did not start over
    assert sorted({int(r["step"]) for r in csv_metrics(tmp_path / "resumed") if r["train/loss"]}) == list(range(5, 10))


@pytest.mark.slow
def test_sft_then_ict_then_extracted(tmp_path, cache_dir, data_file):
    common = [f"data.path={data_file}", "logger=csv", "trainer.max_epochs=1", *SMALL]
    out = succeeded(run_cli(tmp_path, "sft", *common, "objective=sft"))
    assert "objective=sft, exits=[2, 4, 6, 8]" in out  # trained at 8, reported at every exit
    sft = run_checkpoint(tmp_path / "sft")
    assert [int(r["step"]) for r in csv_metrics(tmp_path / "sft") if r.get("train/loss_exit_8")]
    assert not any(r.get("train/loss_exit_4") for r in csv_metrics(tmp_path / "sft"))

    succeeded(
        run_cli(
            tmp_path,
            "ict",
            *common,
            "objective=ict",
            f"objective.init_from={tmp_path}/sft/checkpoints/last.ckpt",
        )
    )
    ict = run_checkpoint(tmp_path / "ict")
    assert ict["sortednet"]["exit_heads"] == [2, 4, 6]
    for key, value in sft["state_dict"].items():  # the SFT model is frozen, exit 8 keeps its head
        torch.testing.assert_close(ict["state_dict"][key], value, rtol=0, atol=0)
    shared = sft["state_dict"]["net.lm.lm_head.weight"]
    for e in (2, 4, 6):
        assert not torch.equal(ict["state_dict"][f"net.exit_heads.{e}.weight"], shared)

    out = succeeded(run_cli(tmp_path, "extracted", *common, "objective=extracted"))
    meta = run_checkpoint(tmp_path / "extracted")["sortednet"]
    assert (meta["num_layers"], meta["exits"]) == (4, [4])
    assert "exits=[4]" in out


def test_any_local_checkpoint_and_jsonl_file(tmp_path, cache_dir, embedded_root, tokenizer, data_file):
    """A user's own model directory (here a tiny Mistral) with a separate tokenizer and a .jsonl data file."""
    model_dir = save_tiny("mistral", tmp_path / "mistral", vocab_size=len(tokenizer))
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps(row) for row in json.loads(data_file.read_text())))
    out = succeeded(
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
    assert run_checkpoint(tmp_path / "own")["sortednet"]["hf_config"]["model_type"] == "mistral"


@pytest.mark.slow
def test_wandb_logs_offline_without_credentials(tmp_path, cache_dir, data_file):
    out = succeeded(run_cli(tmp_path, "wb", f"data.path={data_file}", "trainer.max_epochs=1", *SMALL))
    offline_runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert f"wandb sync {offline_runs[0]}" in out


@pytest.mark.slow
def test_multirun_over_exit_sets_gives_one_wandb_run_per_job(tmp_path, cache_dir, data_file):
    out = succeeded(
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


@pytest.mark.slow
def test_distill_in_bf16_mixed_trains_and_reports_agreement(tmp_path, cache_dir, data_file):
    """loss=distill under trainer.precision=bf16-mixed on the CPU: the cheap path the SmolLM2 epoch runs."""
    out = succeeded(
        run_cli(
            tmp_path, "distill", f"data.path={data_file}", "logger=csv", "trainer.max_steps=3", "loss=distill",
            "trainer.precision=bf16-mixed", "exits=[4,8]", *SMALL[:3], "eval.num_generate=0",
        )
    )  # fmt: skip
    assert "objective=soft, exits=[4, 8]" in out
    rows = csv_metrics(tmp_path / "distill")
    assert [r for r in rows if r["train/loss_exit_4"]] and any(r["val/accept_exit_4"] for r in rows)
    assert run_checkpoint(tmp_path / "distill")["hyper_parameters"]["loss"]["distill"] == 1.0
