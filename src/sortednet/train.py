"""`python -m sortednet.train [overrides]`: fine-tune with SoFT, SFT, ICT or extracted, then report per exit."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, MissingMandatoryValue, OmegaConf

from sortednet.config import TrainConfig
from sortednet.errors import SortedNetError

ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def build_module(cfg: TrainConfig):
    """The LightningModule of a run, before its weights are loaded (``configure_model``)."""
    from hydra.utils import instantiate

    from sortednet.module import SortedModule

    return SortedModule(
        cfg.model,
        cfg.objective,
        cfg.loss,
        exits=cfg.exits,
        optimizer=instantiate(cfg.optimizer) if cfg.optimizer else None,
        warmup_steps=cfg.warmup_steps,
        min_lr_ratio=cfg.min_lr_ratio,
        cache_dir=cfg.cache_dir,
        activation_checkpointing=cfg.strategy.activation_checkpointing,
        mixed_precision=cfg.strategy.name == "fsdp" and str(cfg.trainer.get("precision")) == "bf16-mixed",
        prompt_style=cfg.data.prompt_style,
    )


STRATEGIES = ("single", "ddp", "fsdp")


def _world_size(trainer: dict) -> int:
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    if isinstance(devices, list | tuple):
        return len(devices) * nodes
    if isinstance(devices, int) or (isinstance(devices, str) and devices.isdigit()):
        return int(devices) * nodes
    return nodes  # "auto": Lightning decides; checks that need the count are skipped


def configure_strategy(cfg: TrainConfig) -> dict:
    """``cfg.trainer`` with the strategy group applied: Lightning's strategy object, the precision FSDP2
    leaves to Lightning, and gradient accumulation from ``data.global_batch_size``. One-line errors."""
    trainer = dict(cfg.trainer)
    name, world = cfg.strategy.name, _world_size(trainer)
    if name not in STRATEGIES:
        raise SortedNetError(f"unknown strategy {name!r}; use strategy={'|'.join(STRATEGIES)}")
    if name == "ddp":
        trainer["strategy"] = "ddp"
    if name == "fsdp":
        from lightning.pytorch.strategies import ModelParallelStrategy

        if world < 2:
            raise SortedNetError(
                f"strategy=fsdp shards the model over several devices but trainer.devices={trainer.get('devices')}; "
                f"set trainer.devices=N (N >= 2) or use strategy=single"
            )
        precision = str(trainer.get("precision", "32-true"))
        if precision not in ("32-true", "bf16-true", "bf16-mixed"):
            raise SortedNetError(
                f"strategy=fsdp supports trainer.precision=32-true|bf16-mixed|bf16-true, not {precision}"
            )
        if precision == "bf16-mixed":  # FSDP2's MixedPrecisionPolicy casts; Lightning must not autocast on top
            trainer["precision"] = "32-true"
        trainer["strategy"] = ModelParallelStrategy(
            data_parallel_size=world,
            tensor_parallel_size=1,
            save_distributed_checkpoint=cfg.strategy.save_distributed_checkpoint,
        )
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


def _run_name_and_group() -> tuple[str, str | None]:
    hydra_cfg = HydraConfig.get()
    name = hydra_cfg.job.override_dirname or "default"
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return f"{hydra_cfg.job.num}:{name}", f"sweep-{Path(hydra_cfg.sweep.dir).name}"
    return name, None


def train(cfg: TrainConfig, resolved: dict) -> None:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar

    from sortednet import loggers, optim
    from sortednet.callbacks import TokenThroughput
    from sortednet.data.datamodule import AlpacaDataModule
    from sortednet.eval.exits import exit_report, format_report
    from sortednet.hub import load_tokenizer

    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    if cfg.ckpt_path and not Path(cfg.ckpt_path).is_file():
        raise SortedNetError(f"ckpt_path {cfg.ckpt_path!r} not found; pass a .ckpt written by an earlier run")
    cfg.cache_dir = os.path.expanduser(cfg.cache_dir)
    trainer_args = configure_strategy(cfg)
    module = build_module(cfg)
    if module.optimizer_factory is not None:
        optim.check(module.optimizer_factory, str(trainer_args.get("accelerator", "auto")))
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path, cfg.cache_dir)
    datamodule = AlpacaDataModule(cfg.data, tokenizer, cfg.cache_dir)
    # Check model, exits and data before any process, logger or file is started. Under FSDP the weights
    # are loaded later, inside Lightning's configure_model, after sharding: check on the meta device.
    fsdp = cfg.strategy.name == "fsdp"
    if fsdp:
        module.check()
    else:
        module.configure_model()
    datamodule.prepare_data()

    run_dir = Path(cfg.run_dir)
    name, group = _run_name_and_group()
    logger = loggers.build_logger(cfg.logger, str(run_dir), name, group, resolved)
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="step{step}",
        auto_insert_metric_name=False,
        monitor="val/loss",
        mode="min",
        save_last=True,
    )
    callbacks = [checkpoints, RichProgressBar()]
    if logger:
        callbacks += [LearningRateMonitor(logging_interval="step"), TokenThroughput(**vars(cfg.throughput))]
    try:
        try:
            trainer = L.Trainer(**trainer_args, logger=logger, callbacks=callbacks, default_root_dir=str(run_dir))
        except (TypeError, ValueError) as error:
            raise SortedNetError(f"bad trainer setting: {error}") from error
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        # Validation-time checkpoints can miss the last steps; last.ckpt is always the end of training.
        trainer.save_checkpoint(checkpoints.format_checkpoint_name({}, checkpoints.CHECKPOINT_NAME_LAST))
        metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
        if trainer.is_global_zero:
            # Greedy answers need the whole model on one rank; sharded weights are gathered only collectively.
            settings = dataclasses.replace(cfg.eval, num_generate=0) if fsdp else cfg.eval
            report = exit_report(module, datamodule, tokenizer, metrics, settings)
            table = format_report(report, title=f"objective={cfg.objective.name}, exits={module.eval_exits}")
            (run_dir / "exit_report.txt").write_text(table + "\n")
            print(table)
            best = checkpoints.best_model_path or "none (no validation ran)"
            print(f"checkpoint:  {best}  (last: {checkpoints.last_model_path})")
            print(f"run dir:     {run_dir}")
            print(f"logs:        {loggers.describe(logger)}")
    finally:
        loggers.finish(logger)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        train(OmegaConf.to_object(cfg), resolved)
    except MissingMandatoryValue as error:
        _fail(f"{error.full_key} has no value; set it on the command line: {error.full_key}=...")
    except SortedNetError as error:
        _fail(str(error))


def _fail(message: str) -> None:
    print(f"sortednet: error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
