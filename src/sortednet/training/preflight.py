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

import torch

from sortednet.checkpoint import Metadata
from sortednet.checkpoint import read_metadata as read
from sortednet.config import TrainConfig, check_ranges
from sortednet.errors import SortedNetError


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
    """Refuse settings that cannot train as meant; see the module docstring. Each setting's own range is checked by
    the typed config (:func:`sortednet.config.check_ranges`, run when the config is built); what is left here are
    the rules between settings."""
    check_ranges(cfg)  # a config built in code, not composed, is checked too
    trainer = cfg.trainer
    check_precision(trainer)
    if cfg.loss.distill and cfg.objective.name != "soft":
        raise SortedNetError(
            f"loss.distill teaches the exits of one shared head from the deepest (objective=soft), not "
            f"objective={cfg.objective.name}; use objective=soft or drop loss.distill"
        )
    if trainer.get("max_epochs") == -1 and trainer.get("max_steps", -1) == -1:
        raise SortedNetError("trainer.max_epochs=-1 and trainer.max_steps=-1 never stop; set one of them")


def read_metadata(ckpt: str) -> Metadata:
    """The record of the training checkpoint ``ckpt_path`` (no weights read), with :mod:`sortednet.checkpoint`'s
    one-line errors naming the key."""
    try:
        return read(ckpt, exported=False)
    except SortedNetError as error:
        raise SortedNetError(f"ckpt_path: {error}") from error


def check_resume(cfg: TrainConfig, metadata: Metadata) -> None:
    """Refuse a ``ckpt_path`` whose model or objective differs from this run's (``metadata`` is the module's
    :meth:`~sortednet.training.module.SortedModule.metadata` for this config); a distributed checkpoint needs fsdp."""
    if Path(cfg.ckpt_path).expanduser().is_dir() and cfg.strategy.name != "fsdp":
        raise SortedNetError(
            f"ckpt_path {cfg.ckpt_path!r} is a distributed (sharded) checkpoint; resume it with strategy=fsdp"
        )
    theirs = read_metadata(cfg.ckpt_path)

    def shape(meta: Metadata) -> str:
        hf = meta.hf_config
        return f"{meta.num_layers} layers of width {hf.get('hidden_size')}, vocabulary {hf.get('vocab_size')}"

    if theirs.objective != metadata.objective:
        raise SortedNetError(
            f"ckpt_path {cfg.ckpt_path!r} was trained with objective={theirs.objective}, this run is "
            f"objective={metadata.objective}; resume with objective={theirs.objective}"
        )
    if shape(theirs) != shape(metadata) or theirs.exit_heads != metadata.exit_heads:
        raise SortedNetError(
            f"ckpt_path {cfg.ckpt_path!r} holds a model of {shape(theirs)} (exit heads {theirs.exit_heads}), "
            f"this run's is {shape(metadata)} (exit heads {metadata.exit_heads}); resume with the run's "
            f"model.name_or_path, objective and exits"
        )
    rank = (theirs.lora or {}).get("rank", 0)
    if rank != (metadata.lora or {}).get("rank", 0):
        raise SortedNetError(
            f"ckpt_path {cfg.ckpt_path!r} was trained with model.lora.rank={rank}; resume with the same model.lora"
        )
