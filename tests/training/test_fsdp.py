"""FSDP2 (strategy=fsdp) on 2 CPU processes over gloo, through the real CLI, against one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import csv_metrics, rows_of_very_different_lengths, run_cli, succeeded, train_in_process
from sortednet.embedded import make_rows

# 12 rows, 4 held out: the 8 training rows are one step of the global batch (8 x 1 process, 4 x 2 processes),
# so every step sees the same examples in both runs whatever the samplers' order.
COMMON = [
    "data.val_size=4",
    "data.eval_batch_size=4",
    "logger=csv",
    "eval.num_generate=0",
    "trainer.max_steps=3",
    "trainer.max_epochs=5",
    "trainer.val_check_interval=1.0",
]
FSDP = ["strategy=fsdp", "trainer.devices=2", "trainer.accelerator=cpu", "data.batch_size=4"]
SINGLE = ["data.batch_size=8"]


@pytest.fixture(scope="module")
def twelve_rows(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "twelve.json"
    path.write_text(json.dumps(make_rows(12)))
    return path


def _train_losses(run_dir: Path) -> dict[int, dict[str, float]]:
    return {
        int(r["step"]): {k: float(v) for k, v in r.items() if k.startswith("train/loss") and v}
        for r in csv_metrics(run_dir)
        if r["train/loss"]
    }


def _assert_same_losses(single: dict, sharded: dict, steps: int) -> None:
    assert sorted(single) == sorted(sharded) == list(range(steps))
    for step in single:
        assert single[step].keys() == sharded[step].keys()
        for key, value in single[step].items():
            assert sharded[step][key] == pytest.approx(value, rel=1e-4), (step, key)


@pytest.mark.slow
def test_fsdp_on_two_processes_matches_one_process(tmp_path, cache_dir, twelve_rows):
    data = f"data.path={twelve_rows}"
    succeeded(run_cli(tmp_path, "single", data, *COMMON, *SINGLE))
    out = succeeded(run_cli(tmp_path, "fsdp", data, *COMMON, *FSDP))
    assert "objective=soft, exits=[2, 4, 6, 8]" in out
    single, sharded = _train_losses(tmp_path / "single"), _train_losses(tmp_path / "fsdp")
    assert {"train/loss_exit_2", "train/loss_exit_8"} <= single[0].keys()
    _assert_same_losses(single, sharded, 3)  # the first step, and the updates: the same training
    assert single[2]["train/loss"] < single[0]["train/loss"]
    assert (tmp_path / "fsdp" / "checkpoints" / "last.ckpt" / "meta.pt").is_file()  # one shard per rank
    # written atomically (temp sibling, then swapped in): no hidden temp directory is left
    assert not [p.name for p in (tmp_path / "fsdp" / "checkpoints").iterdir() if p.name.startswith(".")]
    # consolidated without a process group into one HF model: the weights of the one-process run
    _assert_consolidates_to(tmp_path / "fsdp", tmp_path / "single", tmp_path / "hf-fsdp")
    # resumed on another world size (3 ranks): DCP reshards; re-saved at once, model and optimizer are unchanged
    last = tmp_path / "fsdp" / "checkpoints" / "last.ckpt"
    three = [*FSDP[:1], "trainer.devices=3", *FSDP[2:]]
    succeeded(run_cli(tmp_path, "fsdp-3", data, *COMMON, *three, f"ckpt_path={last}"))
    resaved = tmp_path / "fsdp-3" / "checkpoints" / "last.ckpt"
    assert len(list(resaved.glob("*.distcp"))) == 3 and len(list(last.glob("*.distcp"))) == 2
    for key in ("state_dict", "optimizer_0"):
        before, after = _read_dcp(last, key), _read_dcp(resaved, key)
        assert before.keys() == after.keys()
        for name in before:
            assert _equal(before[name], after[name]), (key, name)


@pytest.mark.slow
def test_two_ranks_accumulating_equal_one_rank_then_ict_starts_from_the_sharded_directory(tmp_path, cache_dir):
    """The paper's 13B path on 2 CPU ranks: SFT under FSDP with gradient accumulation (2 ranks x 2 micro-batches
    of 2 = one process at batch 8, on responses of very different lengths), then ICT from its checkpoint
    directory."""
    rows = tmp_path / "varied.json"
    rows.write_text(json.dumps(rows_of_very_different_lengths(12)))
    data = f"data.path={rows}"
    accumulating = [*FSDP[:3], "data.batch_size=2", "trainer.accumulate_grad_batches=2"]
    succeeded(run_cli(tmp_path, "sft-single", data, *COMMON, *SINGLE, "objective=sft"))
    succeeded(run_cli(tmp_path, "sft-fsdp", data, *COMMON, *accumulating, "objective=sft"))
    single, sharded = _train_losses(tmp_path / "sft-single"), _train_losses(tmp_path / "sft-fsdp")
    _assert_same_losses(single, sharded, 3)
    _assert_consolidates_to(tmp_path / "sft-fsdp", tmp_path / "sft-single", tmp_path / "hf-sft")

    # ICT under FSDP from the FSDP run's directory: frozen sharded decoder, new heads in the root unit, trained
    # as in one process (which reads the same directory).
    sharded_sft = tmp_path / "sft-fsdp" / "checkpoints" / "last.ckpt"
    assert sharded_sft.is_dir()
    ict = ["objective=ict", f"objective.init_from={sharded_sft}", "trainer.max_steps=2"]
    succeeded(run_cli(tmp_path, "ict-single", data, *COMMON, *SINGLE, *ict))
    succeeded(run_cli(tmp_path, "ict-fsdp", data, *COMMON, *FSDP, *ict))
    single, sharded = _train_losses(tmp_path / "ict-single"), _train_losses(tmp_path / "ict-fsdp")
    _assert_same_losses(single, sharded, 2)
    assert single[1]["train/loss"] < single[0]["train/loss"]  # the heads do train
    _assert_consolidates_to(tmp_path / "ict-fsdp", tmp_path / "ict-single", tmp_path / "hf-ict")


def _read_dcp(path: Path, key: str) -> dict:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(path, path.parent / f"{path.name}.pt")  # the public way to read a whole DCP checkpoint
    return torch.load(path.parent / f"{path.name}.pt", weights_only=True)[key]


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def _assert_consolidates_to(sharded_run: Path, single_run: Path, out: Path) -> None:
    """`sortednet.consolidate` of the sharded run's distributed last.ckpt gives the one-process run's weights."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from sortednet.consolidate import EXIT_HEADS_FILE, main
    from sortednet.inference.load import load_sorted

    assert main([f"ckpt={sharded_run / 'checkpoints' / 'last.ckpt'}", f"out={out}"]) == 0
    reference = torch.load(single_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    meta = reference["sortednet"]
    lm = AutoModelForCausalLM.from_pretrained(out)
    for key, value in lm.state_dict().items():
        torch.testing.assert_close(value, reference["state_dict"][f"net.lm.{key}"], rtol=1e-4, atol=1e-5)
    entry = json.loads((out / "config.json").read_text())["sortednet"]
    assert entry["exits"] == meta["exits"] and entry["exit_heads"] == meta["exit_heads"]
    assert entry["objective"] == meta["objective"] and entry["num_layers"] == meta["num_layers"]
    if meta["exit_heads"]:
        heads = load_file(out / EXIT_HEADS_FILE)
        for e in meta["exit_heads"]:
            expected = reference["state_dict"][f"net.exit_heads.{e}.weight"]
            torch.testing.assert_close(heads[f"{e}.weight"], expected, rtol=1e-4, atol=1e-5)
    assert load_sorted(str(out))[2].num_layers == meta["num_layers"]
    # the one loader reads the shards themselves too: the same weights and heads as the consolidated directory
    sharded, _, sharded_meta = load_sorted(str(sharded_run / "checkpoints" / "last.ckpt"))
    assert sharded_meta.exit_heads == meta["exit_heads"] and sharded_meta.exits == meta["exits"]
    for key, value in lm.state_dict().items():
        torch.testing.assert_close(sharded.lm.state_dict()[key], value)


@pytest.mark.slow
def test_fsdp_on_one_device_only_when_allowed_and_then_matches_single(tmp_path, cache_dir, twelve_rows, capsys):
    data = f"data.path={twelve_rows}"
    one_device = ["strategy=fsdp", "trainer.accelerator=cpu", "data.batch_size=8"]
    code, err = train_in_process([f"hydra.run.dir={tmp_path / 'refused'}", data, *COMMON, *one_device], capsys)
    assert code != 0 and "strategy.allow_single_device=true" in err
    succeeded(run_cli(tmp_path, "single", data, *COMMON, *SINGLE))
    succeeded(run_cli(tmp_path, "fsdp1", data, *COMMON, *one_device, "strategy.allow_single_device=true"))
    _assert_same_losses(_train_losses(tmp_path / "single"), _train_losses(tmp_path / "fsdp1"), 3)


BAD_INPUT = [
    (["strategy=fsdp"], "strategy=fsdp shards the model over several devices"),
    (["strategy=fsdp", "trainer.devices=2", "trainer.precision=16-mixed"], "bf16-mixed"),
    (["strategy=ddp", "trainer.devices=2", "data.batch_size=4", "data.global_batch_size=12"], "not a multiple"),
    (["strategy=no_such"], "no_such"),
    (["ckpt_path=/"], "is a directory, not a distributed checkpoint"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUT, ids=[" ".join(o) for o, _ in BAD_INPUT])
def test_bad_strategy_input_is_one_line_before_any_process(
    tmp_path, cache_dir, twelve_rows, capsys, monkeypatch, overrides, message
):
    monkeypatch.chdir(tmp_path)
    run = [f"hydra.run.dir={tmp_path / 'run'}", f"data.path={twelve_rows}", "logger=csv", *overrides]
    code, err = train_in_process(run, capsys)
    assert code != 0
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "csv").exists()
