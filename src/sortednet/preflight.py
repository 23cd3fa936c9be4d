"""Checks of a training config that run before anything is loaded, launched or written: one-line errors.

:func:`check_settings` refuses values Lightning or PyTorch would reject with a traceback, or accept and
silently mis-train on (a negative warm-up starts the learning rate mid-ramp; ``min_lr_ratio`` above 1 makes
the "decay" climb; ``trainer.max_epochs=0`` trains nothing). :func:`check_resume` reads a ``ckpt_path``'s
metadata (memory-mapped, no weights copied) and refuses one that is not a sortednet checkpoint, is damaged,
or holds another model or objective than this run's.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from sortednet.config import TrainConfig
from sortednet.errors import SortedNetError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _at_least(key: str, value: Any, low: int, what: str = "") -> None:
    if not _is_int(value) or value < low:
        raise SortedNetError(f"{key}={value!r} must be a whole number >= {low}{what}; set e.g. {key}={max(low, 1)}")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (x86 AVX512-BF16 or AMX; the ``bf16`` flag on Arm). Without
    it oneDNN emulates bf16 by conversion, and bf16 autocast runs slower than fp32 instead of faster."""
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return platform.machine() in ("aarch64", "arm64") and " bf16" in flags


def check_precision(trainer: dict) -> None:
    """bf16 on a CPU that has no bf16 arithmetic would train slower than fp32, not faster: refuse it."""
    precision, accelerator = str(trainer.get("precision", "32-true")), str(trainer.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if precision.startswith("bf16") and on_cpu and not cpu_has_native_bf16():
        raise SortedNetError(
            f"trainer.precision={precision} on this CPU, which has no bf16 arithmetic (AVX512-BF16, AMX or Arm "
            f"BF16), would emulate it and run slower than fp32; use trainer.precision=32-true"
        )


def check_settings(cfg: TrainConfig) -> None:
    """Refuse settings that cannot train as meant; see the module docstring."""
    trainer = cfg.trainer
    check_precision(trainer)
    max_steps, max_epochs = trainer.get("max_steps", -1), trainer.get("max_epochs")
    if not _is_int(max_steps) or max_steps == 0 or max_steps < -1:
        raise SortedNetError(f"trainer.max_steps={max_steps!r} must be a positive step count, or -1 for no limit")
    if max_epochs is not None and (not _is_int(max_epochs) or max_epochs == 0 or max_epochs < -1):
        raise SortedNetError(
            f"trainer.max_epochs={max_epochs!r} must be a positive number of epochs (or -1 with trainer.max_steps=N)"
        )
    if max_epochs == -1 and max_steps == -1:
        raise SortedNetError("trainer.max_epochs=-1 and trainer.max_steps=-1 never stop; set one of them")
    devices = trainer.get("devices", 1)
    if _is_int(devices) or (isinstance(devices, str) and devices.lstrip("-").isdigit()):
        _at_least("trainer.devices", int(devices), 1)
    _at_least("trainer.accumulate_grad_batches", trainer.get("accumulate_grad_batches", 1), 1)
    _at_least("data.batch_size", cfg.data.batch_size, 1)
    _at_least("data.eval_batch_size", cfg.data.eval_batch_size, 1)
    _at_least("data.max_length", cfg.data.max_length, 2)
    _at_least("data.num_workers", cfg.data.num_workers, 0)
    if cfg.data.global_batch_size is not None:
        _at_least("data.global_batch_size", cfg.data.global_batch_size, 1, " (or null)")
    _at_least("warmup_steps", cfg.warmup_steps, 0, " (0: no warm-up)")
    if not 0 <= cfg.min_lr_ratio <= 1:
        raise SortedNetError(
            f"min_lr_ratio={cfg.min_lr_ratio} must be in [0, 1] (the cosine's final learning rate as a fraction of "
            f"the peak); set e.g. min_lr_ratio=0.1"
        )
    _at_least("eval.num_generate", cfg.eval.num_generate, 0, " (0 skips the exact-match column)")
    _at_least("eval.max_new_tokens", cfg.eval.max_new_tokens, 1)
    _at_least("throughput.window", cfg.throughput.window, 1)
    if cfg.throughput.peak_tflops is not None and not cfg.throughput.peak_tflops > 0:
        raise SortedNetError(f"throughput.peak_tflops={cfg.throughput.peak_tflops} must be > 0 (or null)")
    for key, value in (cfg.optimizer or {}).items():
        if key in ("lr", "eps") and (not _is_number(value) or not value > 0):
            raise SortedNetError(f"optimizer.{key}={value!r} must be a number > 0; set e.g. optimizer.{key}=2e-5")
        if key == "weight_decay" and (not _is_number(value) or value < 0):
            raise SortedNetError(f"optimizer.weight_decay={value!r} must be a number >= 0")


def read_metadata(ckpt: str) -> dict:
    """The ``sortednet`` metadata of ``ckpt_path`` (no weights read), with :mod:`sortednet.checkpoint`'s one-line
    errors naming the key."""
    from sortednet.checkpoint import read_metadata as read

    try:
        return read(ckpt)
    except SortedNetError as error:
        raise SortedNetError(f"ckpt_path: {error}") from error


def check_resume(cfg: TrainConfig, metadata: dict) -> None:
    """Refuse a ``ckpt_path`` whose model or objective differs from this run's (``metadata`` is the module's
    :meth:`~sortednet.module.SortedModule.metadata` for this config); a distributed checkpoint needs fsdp."""
    if Path(cfg.ckpt_path).expanduser().is_dir() and cfg.strategy.name != "fsdp":
        raise SortedNetError(
            f"ckpt_path {cfg.ckpt_path!r} is a distributed (sharded) checkpoint; resume it with strategy=fsdp"
        )
    theirs = read_metadata(cfg.ckpt_path)

    def shape(meta: dict) -> str:
        hf = meta.get("hf_config") or {}
        return f"{meta.get('num_layers')} layers of width {hf.get('hidden_size')}, vocabulary {hf.get('vocab_size')}"

    if theirs.get("objective") != metadata["objective"]:
        raise SortedNetError(
            f"ckpt_path {cfg.ckpt_path!r} was trained with objective={theirs.get('objective')}, this run is "
            f"objective={metadata['objective']}; resume with objective={theirs.get('objective')}"
        )
    if shape(theirs) != shape(metadata) or (theirs.get("exit_heads") or []) != metadata["exit_heads"]:
        raise SortedNetError(
            f"ckpt_path {cfg.ckpt_path!r} holds a model of {shape(theirs)} (exit heads {theirs.get('exit_heads')}), "
            f"this run's is {shape(metadata)} (exit heads {metadata['exit_heads']}); resume with the run's "
            f"model.name_or_path, objective and exits"
        )
    rank = (theirs.get("lora") or {}).get("rank", 0)
    if rank != (metadata.get("lora") or {}).get("rank", 0):
        raise SortedNetError(
            f"ckpt_path {cfg.ckpt_path!r} was trained with model.lora.rank={rank}; resume with the same model.lora"
        )
