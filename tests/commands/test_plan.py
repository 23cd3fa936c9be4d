"""`python -m sortednet.plan`: the paper's 13B run on paper, from the real config on the meta device."""

from __future__ import annotations

import pytest

from sortednet.plan import PlanConfig, main, plan, verdicts
from sortednet.training.composition import compose


def test_soft_13b_on_eight_gpus():
    result = plan(compose(["experiment=soft_13b", "trainer.devices=8"]), PlanConfig())
    assert result["params"] == 13_015_864_320  # Llama-2-13B
    gib = result["gib"]
    assert gib["params"] == pytest.approx(13_015_864_320 * 4 / 8 / 2**30)  # fp32 master weights, 1/8 each
    assert gib["optimizer"] == pytest.approx(2 * gib["params"])  # two fp32 moments
    assert result["sequences"] == 128 and result["tokens"] == 128 * 512
    # The paper's setting: fits on 80 GB cards as is, on 40 GB and the paper's 32 GB V100s only with
    # activation checkpointing.
    assert verdicts(result) == {
        "8x80GB": "fits",
        "8x40GB": "fits with activation checkpointing",
        "8x32GB (paper, V100)": "fits with activation checkpointing",
    }


def test_8bit_optimizer_quarters_the_optimizer_states():
    base = plan(compose(["experiment=soft_13b"]), PlanConfig())["gib"]["optimizer"]
    small = plan(compose(["experiment=soft_13b", "optimizer=adamw8bit"]), PlanConfig())["gib"]["optimizer"]
    assert small == pytest.approx(base / 4)


def test_cli_prints_a_table(capsys):
    assert main(["experiment=soft_13b", "trainer.devices=8", "plan.mfu=0.5"]) == 0
    out = capsys.readouterr().out
    assert "13,015,864,320" in out and "| total, activation checkpointing" in out and "MFU 0.5" in out
