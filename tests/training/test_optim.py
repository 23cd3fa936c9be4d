"""8-bit AdamW through the optimizer group, and its one-line errors."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from conftest import csv_metrics, one_line_error, run_cli, succeeded, train_in_process
from sortednet.embedded import make_rows
from sortednet.errors import SortedNetError
from sortednet.training.optim import adamw8bit, check, paged_adamw8bit


def test_adamw8bit_keeps_8bit_moments_and_steps():
    pytest.importorskip("bitsandbytes")
    weight = torch.nn.Parameter(torch.randn(128, 128))
    optimizer = adamw8bit([weight], lr=1e-2)
    before = weight.detach().clone()
    for _ in range(3):
        optimizer.zero_grad()
        (weight**2).sum().backward()
        optimizer.step()
    assert optimizer.state[weight]["state1"].dtype == torch.uint8  # the first moment, in 8 bits
    assert (weight.detach() ** 2).sum() < (before**2).sum()


def test_train_cli_with_adamw8bit(tmp_path, cache_dir):
    pytest.importorskip("bitsandbytes")
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(make_rows(24)))
    settings = ["data.val_size=8", "data.batch_size=8", "eval.num_generate=0", "logger=csv", "trainer.max_steps=4"]
    settings += ["trainer.max_epochs=5"]  # 2 steps an epoch
    succeeded(
        run_cli(
            tmp_path, "run", f"data.path={data}", "optimizer=adamw8bit", *settings, "trainer.val_check_interval=1.0"
        )
    )
    losses = [float(r["train/loss"]) for r in csv_metrics(tmp_path / "run") if r["train/loss"]]
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_missing_bitsandbytes_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(SortedNetError, match=r"pip install 'sortednet\[bnb\]'"):
        check(adamw8bit)


def test_paged_adamw8bit_on_cpu_is_one_line(tmp_path, cache_dir, capsys, monkeypatch):
    pytest.importorskip("bitsandbytes")
    with pytest.raises(SortedNetError, match="needs a CUDA GPU"):
        check(paged_adamw8bit, "cpu")
    monkeypatch.chdir(tmp_path)
    code, err = train_in_process(
        [f"hydra.run.dir={tmp_path / 'run'}", "optimizer=paged_adamw8bit", "logger=csv"], capsys
    )
    one_line_error(code, err, "optimizer=adamw8bit", alone=False)
