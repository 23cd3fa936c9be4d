"""Training throughput: tokens/s (all and response), FLOP/s and MFU, through Lightning's ``Throughput``."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput, get_available_flops

from sortednet.loss import count_labels


class TokenThroughput(L.Callback):
    """Logs ``train/tokens_per_s`` (non-padding), ``train/response_tokens_per_s`` (label positions),
    ``train/tflops_per_s`` and ``train/mfu`` per device (and ``train/max_memory_gib`` on CUDA), over a sliding
    window of ``window`` steps.

    FLOPs come from the module's ``flops_per_batch`` (analytic, :mod:`sortednet.flops`); the peak is the
    device's known figure (Lightning's table for CUDA GPUs) or ``peak_tflops`` when given — on a CPU there is
    no table, so MFU is logged only with ``peak_tflops``.
    """

    def __init__(self, window: int = 20, peak_tflops: float | None = None, compute_dtype: str = "float32"):
        self.window, self.peak_tflops = window, peak_tflops
        self.compute_dtype = getattr(torch, compute_dtype)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        peak = self.peak_tflops * 1e12 if self.peak_tflops else None
        if peak is None and trainer.strategy.root_device.type == "cuda":
            # Under mixed precision the weights are fp32 but the matmuls run in bf16: the peak is the bf16 one.
            peak = get_available_flops(trainer.strategy.root_device, self.compute_dtype)
        self.tokens = Throughput(available_flops=peak, world_size=trainer.world_size, window_size=self.window)
        self.response = Throughput(world_size=trainer.world_size, window_size=self.window)
        self.counts = {"batches": 0, "samples": 0, "tokens": 0, "labels": 0}
        self.start = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - self.start
        c = self.counts
        c["batches"] += 1
        c["samples"] += batch["input_ids"].shape[0]
        c["tokens"] += int(batch["attention_mask"].sum())
        c["labels"] += count_labels(batch["labels"])
        common = dict(time=elapsed, batches=c["batches"], samples=c["samples"])
        self.tokens.update(**common, lengths=c["tokens"], flops=getattr(pl_module, "flops_per_batch", None))
        self.response.update(**common, lengths=c["labels"])
        tokens, response = self.tokens.compute(), self.response.compute()
        metrics = {
            "train/tokens_per_s": tokens.get("device/items_per_sec"),
            "train/response_tokens_per_s": response.get("device/items_per_sec"),
            "train/tflops_per_s": tokens.get("device/flops_per_sec", 0) / 1e12 or None,
            "train/mfu": tokens.get("device/mfu"),
        }
        if trainer.strategy.root_device.type == "cuda":
            metrics["train/max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        metrics = {k: v for k, v in metrics.items() if v is not None}
        if metrics:
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=batch["input_ids"].shape[0])
