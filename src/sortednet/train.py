"""`python -m sortednet.train [overrides]`: fine-tune with SoFT, SFT, ICT or extracted, then report per exit."""

from __future__ import annotations

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
    )


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

    from sortednet import loggers
    from sortednet.callbacks import TokenThroughput
    from sortednet.data.datamodule import AlpacaDataModule
    from sortednet.eval.exits import exit_report, format_report
    from sortednet.hub import load_tokenizer

    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    if cfg.ckpt_path and not Path(cfg.ckpt_path).is_file():
        raise SortedNetError(f"ckpt_path {cfg.ckpt_path!r} not found; pass a .ckpt written by an earlier run")
    cfg.cache_dir = os.path.expanduser(cfg.cache_dir)
    module = build_module(cfg)
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path, cfg.cache_dir)
    datamodule = AlpacaDataModule(cfg.data, tokenizer, cfg.cache_dir)
    # Load and check weights, exits and data before any process, logger or file is started.
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
            trainer = L.Trainer(**cfg.trainer, logger=logger, callbacks=callbacks, default_root_dir=str(run_dir))
        except (TypeError, ValueError) as error:
            raise SortedNetError(f"bad trainer setting: {error}") from error
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        # Validation-time checkpoints can miss the last steps; last.ckpt is always the end of training.
        trainer.save_checkpoint(checkpoints.format_checkpoint_name({}, checkpoints.CHECKPOINT_NAME_LAST))
        metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
        if trainer.is_global_zero:
            report = exit_report(module, datamodule, tokenizer, metrics, cfg.eval)
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
