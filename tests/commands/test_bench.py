"""The FLOP model behind the benchmark's ideal ratios and MFU, and the benchmark command itself."""

from __future__ import annotations

import sys

import pytest
from transformers import AutoConfig

from conftest import run_process
from sortednet.benchmarks.train import SHAPES
from sortednet.flops import body_flops, head_flops, train_step_flops
from sortednet.hub import causal_lm_from_config
from sortednet.schedule import spread_exits


@pytest.mark.parametrize(
    "config",
    [
        dict(model_type="llama", **SHAPES["llama-32k"]),
        dict(
            model_type="mistral",
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=3,
            num_attention_heads=8,
            num_key_value_heads=2,
            vocab_size=50,
        ),
    ],  # fmt: skip
)
def test_linear_flops_are_six_per_weight_per_token(config):
    """Without attention scores (seq_len 0), forward + backward = 6 FLOPs per linear weight per token."""
    model = causal_lm_from_config(config)
    cfg = AutoConfig.for_model(**config)
    linear_weights = sum(p.numel() for n, p in model.model.layers.named_parameters() if p.dim() == 2)
    assert body_flops(cfg, cfg.num_hidden_layers, n_tokens=10, seq_len=0) == 6 * linear_weights * 10
    assert head_flops(cfg, n_label_tokens=10) == 6 * model.lm_head.weight.numel() * 10


def test_soft_step_adds_one_head_per_exit():
    cfg = AutoConfig.for_model("llama", **SHAPES["llama-32k"])
    sft = train_step_flops(cfg, 1, n_tokens=1024, n_label_tokens=512, seq_len=256)
    soft = train_step_flops(cfg, 8, n_tokens=1024, n_label_tokens=512, seq_len=256)
    assert soft - sft == 7 * head_flops(cfg, 512)
    assert train_step_flops(cfg, 1, 1024, 512, 256, frozen_body=True) < sft
    assert train_step_flops(cfg, 8, 1024, 512, 256, adapters_only=True) == pytest.approx(2 / 3 * soft)


def test_spread_exits():
    assert spread_exits(8, 1) == [8] and spread_exits(8, 2) == [4, 8]
    assert spread_exits(8, 4) == [2, 4, 6, 8] and spread_exits(8, 8) == list(range(1, 9))
    assert spread_exits(40, 8) == [5, 10, 15, 20, 25, 30, 35, 40]


@pytest.mark.slow
def test_bench_train_prints_a_table(tmp_path):
    # Each row runs in its own process (for its peak memory): run_process kills the whole group on a timeout.
    process = run_process(
        [sys.executable, "-m", "sortednet.bench", "train", "shapes=[tiny]", "exits=[1,4]", "batch=2", "seq=32",
         "steps=1", "warmup=1", "peak_tflops=1", "repeats=2", "precision=[32-true,bf16-mixed]",
         "impls=[sft,soft,sampled,rotational]"], tmp_path,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    out = process.stdout
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.splitlines() if line.startswith("| tiny")]
    expected = [("sft", "1", "1"), ("soft", "1", "1"), ("soft", "4", "4"), ("sampled", "4", "2")]
    expected.append(("rotational", "4", "2"))
    assert [(r[2], r[3], r[4]) for r in rows] == expected * 2
    assert [r[1] for r in rows] == ["32-true"] * 5 + ["bf16-mixed"] * 5
    ideal = {(r[1], r[2], r[3]): float(r[10]) for r in rows}
    assert ideal[("32-true", "sft", "1")] == ideal[("32-true", "soft", "1")] == 1.0
    assert ideal[("bf16-mixed", "soft", "4")] > ideal[("bf16-mixed", "sampled", "4")] > 1.0
    assert ideal[("bf16-mixed", "sampled", "4")] == ideal[("bf16-mixed", "rotational", "4")]
    # the speed column is relative to the fp32 step over every exit: 1.00 on that row itself
    assert next(r for r in rows if r[1:4] == ["32-true", "soft", "4"])[12] == "1.00"
    assert "MFU" in out and "peak MB" in out and "medians of 2 interleaved repeat(s)" in out


def test_bench_train_bad_shape_impl_or_precision_is_one_line(capsys):
    from conftest import one_line_error
    from sortednet import bench

    for argv, words in [
        (["shapes=[llama-70b]"], ("shapes=['llama-70b']", "smollm2")),
        (["impls=[distill]"], ("impls=['distill']", "rotational")),
        (["precision=[fp8]"], ("precision=['fp8']", "bf16-mixed")),
        (["repeats=0"], ("repeats=0",)),
    ]:
        one_line_error(bench.main(["train", *argv]), capsys.readouterr().err, *words)
