"""The strategy group of a training config as Lightning's Trainer arguments: single device, DDP, or FSDP2 sharding
(:class:`~sortednet.training.checkpointing.AtomicModelParallelStrategy`), every checkpoint written atomically."""

from __future__ import annotations

import torch

from sortednet.config import TrainConfig
from sortednet.errors import SortedNetError
from sortednet.hub import check_quantization
from sortednet.training.checkpointing import AtomicCheckpointIO, AtomicModelParallelStrategy

STRATEGIES = ("single", "ddp", "fsdp")


def world_size(trainer: dict) -> int:
    """The number of ranks ``trainer`` (the ``trainer`` config) runs on: devices x nodes; under
    ``devices=auto``, the node count (checks that need the real count are skipped)."""
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    if isinstance(devices, list | tuple):
        return len(devices) * nodes
    if isinstance(devices, int) or (isinstance(devices, str) and devices.isdigit()):
        return int(devices) * nodes
    return nodes  # "auto": Lightning decides


def configure_strategy(cfg: TrainConfig) -> dict:
    """``cfg.trainer`` with the strategy group applied: Lightning's strategy object, the precision FSDP2
    leaves to Lightning, and gradient accumulation from ``data.global_batch_size``. One-line errors."""
    trainer = dict(cfg.trainer)
    trainer.pop("compile", None)  # sortednet's own knob (build_module), not a Lightning Trainer argument
    # Every single-file checkpoint (single, ddp, fsdp gathered) is written atomically: temp file, fsync, rename.
    trainer["plugins"] = [*(trainer.get("plugins") or []), AtomicCheckpointIO()]
    name, world = cfg.strategy.name, world_size(trainer)
    if name not in STRATEGIES:
        raise SortedNetError(f"unknown strategy {name!r}; use strategy={'|'.join(STRATEGIES)}")
    if name == "ddp":
        trainer["strategy"] = "ddp"
    if name == "fsdp":
        if world < 2 and not cfg.strategy.allow_single_device:
            raise SortedNetError(
                f"strategy=fsdp shards the model over several devices but trainer.devices={trainer.get('devices')}; "
                f"set trainer.devices=N (N >= 2), use strategy=single, or add strategy.allow_single_device=true "
                f"to run the sharded code path on one device"
            )
        precision = str(trainer.get("precision", "32-true"))
        if precision not in ("32-true", "bf16-true", "bf16-mixed"):
            raise SortedNetError(
                f"strategy=fsdp supports trainer.precision=32-true|bf16-mixed|bf16-true, not {precision}"
            )
        if precision == "bf16-mixed":  # FSDP2's MixedPrecisionPolicy casts; Lightning must not autocast on top
            trainer["precision"] = "32-true"
        trainer["strategy"] = AtomicModelParallelStrategy(  # distributed checkpoints: temp dir, then swap
            data_parallel_size=world,
            tensor_parallel_size=1,
            save_distributed_checkpoint=cfg.strategy.save_distributed_checkpoint,
        )
    if cfg.model.lora.rank or cfg.model.quantization is not None:
        _check_adapters(cfg, name, str(trainer.get("accelerator", "auto")))
    global_batch = cfg.data.global_batch_size
    if global_batch is not None:
        per_step = cfg.data.batch_size * world
        if global_batch % per_step:
            raise SortedNetError(
                f"data.global_batch_size={global_batch} is not a multiple of data.batch_size x devices = "
                f"{cfg.data.batch_size} x {world}; change one of them"
            )
        trainer["accumulate_grad_batches"] = global_batch // per_step
    return trainer


def _check_adapters(cfg: TrainConfig, strategy: str, accelerator: str) -> None:
    """LoRA / QLoRA settings that cannot run: one-line errors before anything is loaded."""
    cuda = torch.cuda.is_available() and accelerator in ("gpu", "cuda", "auto")
    check_quantization(cfg.model.quantization, cfg.model.lora.rank, cuda)
    if strategy == "fsdp":
        raise SortedNetError("model.lora runs with strategy=single|ddp; FSDP2 sharding of adapters is not supported")
