"""`python -m sortednet.train [overrides]`: fine-tune with SoFT, SFT, ICT or extracted, then report per exit."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from omegaconf import DictConfig, MissingMandatoryValue, OmegaConf, open_dict, read_write

from sortednet.config import TrainConfig
from sortednet.errors import SortedNetError
from sortednet.eval.exits import exit_report, format_report
from sortednet.hub import load_tokenizer
from sortednet.objectives import build_net, check_objective
from sortednet.training import loggers, optim, preflight, ranks
from sortednet.training.callbacks import TokenThroughput
from sortednet.training.compat import spawns_ranks_by_rerunning_the_script
from sortednet.training.composition import check_command_line
from sortednet.training.datamodule import AlpacaDataModule
from sortednet.training.module import build_module
from sortednet.training.rundir import save_run_config
from sortednet.training.strategy import configure_strategy


def _run_name_and_group() -> tuple[str, str | None]:
    hydra_cfg = HydraConfig.get()
    name = hydra_cfg.job.override_dirname or "default"
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return f"{hydra_cfg.job.num}:{name}", f"sweep-{Path(hydra_cfg.sweep.dir).name}"
    return name, None


# Set by Lightning's subprocess launcher in the launching process; left over, they would make the next job of
# a sweep believe its ranks were already started (LOCAL_RANK) or reuse the last job's port.
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS")
# Hydra overrides that only mean something to the sweep itself, not to one job's ranks.
_SWEEP_ONLY = ("hydra.mode", "hydra.sweep", "hydra.sweeper", "hydra/sweeper", "hydra.launcher", "hydra/launcher")
_SWEEP_ONLY += ("hydra.run.dir", "hydra.output_subdir", "hydra.job.name")


@contextlib.contextmanager
def one_job_ranks(trainer):
    """Make a multi-process strategy safe inside a local Hydra sweep (``-m``), for the duration of one job.

    Lightning starts ranks 1..N-1 by re-running ``sys.argv`` (plus ``hydra.run.dir=<run dir>``). In a sweep
    that command line is the whole sweep (``-m exits=[4,8],[2,4,6,8]``), so every rank would run every job.
    We chose to make it safe rather than refuse, so a one-machine multi-GPU sweep works without a cluster:
    - ``sys.argv`` becomes this job's own overrides (``HydraConfig.overrides.task``, plus the Hydra overrides
      that are not about the sweep), without ``-m``: the children run exactly this job, in RUN mode;
    - Hydra's ``run.dir``, which Lightning hands the children, becomes this job's output directory, so the
      children's ``run_dir`` is rank 0's (not a stray ``outputs/DATE/TIME``);
    - after the job: the launcher's environment variables are restored (``LOCAL_RANK`` left set would make the
      next job skip launching its ranks and wait forever); :func:`sortednet.training.ranks.watched` has waited for the
      children and destroyed the process group, so the next job starts from a clean slate.
    Under a launcher that starts one task per device itself (submitit/SLURM, torchrun), Lightning does not
    re-launch anything and this is a no-op; so is a single-process run or a non-sweep run.
    """
    if (
        not HydraConfig.initialized()
        or HydraConfig.get().mode != RunMode.MULTIRUN
        or not spawns_ranks_by_rerunning_the_script(trainer.strategy)
    ):
        yield
        return
    hydra_cfg = HydraConfig.get()
    argv, env = list(sys.argv), {key: os.environ.get(key) for key in _LAUNCH_ENV}
    hydra_overrides = [o for o in hydra_cfg.overrides.hydra if not o.lstrip("~+").startswith(_SWEEP_ONLY)]
    sys.argv = [argv[0], *hydra_cfg.overrides.task, *hydra_overrides]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        run_dir, hydra_cfg.run.dir = hydra_cfg.run.dir, hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(hydra_cfg), open_dict(hydra_cfg):
            hydra_cfg.run.dir = run_dir
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _compute_dtype(cfg: TrainConfig) -> str:
    """The dtype matrix products run in (for the device's peak FLOP/s in MFU): bf16/fp16 under mixed or true
    half precision (FSDP2's policy included), else the weights' dtype."""
    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision.startswith("bf16"):
        return "bfloat16"
    if precision.startswith("16"):
        return "float16"
    return cfg.model.dtype


def _quiet_dependencies() -> None:
    """Keep a user's terminal for sortednet's progress and tables: silence dependency messages that say nothing
    about this run."""
    # Lightning advertises its cloud logger on every run.
    tip = lambda record: not str(record.msg).startswith("💡 Tip")  # noqa: E731
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(tip)
    # A run that stops before its first validation has no val/loss yet; last.ckpt is saved after fit regardless.
    warnings.filterwarnings("ignore", message=r".*could not find the monitored key.*")
    # Lightning's own use of a torch pytree API that torch deprecated: nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # Validation losses are torchmetrics means whose compute() already reduces over ranks: no sync_dist needed.
    warnings.filterwarnings("ignore", message=r".*It is recommended to use `self.log\('val/.*sync_dist=True.*")


def _model_line(module) -> str:
    """One line in place of Lightning's model summary (whose FLOPs column reads 0 without an example input)."""
    params = list(module.net.parameters())
    total, trainable = sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
    return (
        f"model: {module.model_config.name_or_path} | {total / 1e6:.1f}M parameters, {trainable / 1e6:.1f}M "
        f"trainable | {module.net.num_layers} layers | objective={module.objective.name}, exits={module.eval_exits}"
    )


def train(cfg: TrainConfig, resolved: dict, task_config: DictConfig | None = None) -> None:
    preflight.check_settings(cfg)
    _quiet_dependencies()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    if cfg.ckpt_path:
        preflight.read_metadata(cfg.ckpt_path)  # a missing or damaged checkpoint, before the model is loaded
    cfg.cache_dir = os.path.expanduser(cfg.cache_dir)
    trainer_args = configure_strategy(cfg)
    trainer_args.setdefault("enable_model_summary", False)  # replaced by _model_line
    check_objective(cfg.objective, cfg.model.lora)
    optimizer = instantiate(cfg.optimizer) if cfg.optimizer else None
    if optimizer is not None:
        optim.check(optimizer, str(trainer_args.get("accelerator", "auto")))
    # Built once, here, and handed down: the tokenizer, the data, the net. Model, exits and data are checked before
    # any process, logger or file is started. Under FSDP the net is built on the meta device and its weights are
    # loaded later, inside Lightning's configure_model, after sharding (load_full, on rank 0).
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path, cfg.cache_dir)
    datamodule = AlpacaDataModule(cfg.data, tokenizer, cfg.cache_dir, seed=cfg.seed)
    fsdp = cfg.strategy.name == "fsdp"
    net, exits = build_net(cfg.model, cfg.objective, cfg.exits, cfg.cache_dir, meta=fsdp)
    load_full = (lambda: build_net(cfg.model, cfg.objective, cfg.exits, cfg.cache_dir)[0]) if fsdp else None
    module = build_module(cfg, net, exits, optimizer, load_full)
    if cfg.ckpt_path:
        preflight.check_resume(cfg, module.metadata())
    datamodule.prepare_data()

    run_dir = Path(cfg.run_dir)
    if task_config is not None:
        save_run_config(run_dir, task_config)  # .hydra/: only for a run that passed every check
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
        throughput = TokenThroughput(**vars(cfg.throughput), compute_dtype=_compute_dtype(cfg))
        callbacks += [LearningRateMonitor(logging_interval="step"), throughput]
    try:
        try:
            trainer = L.Trainer(**trainer_args, logger=logger, callbacks=callbacks, default_root_dir=str(run_dir))
        except (TypeError, ValueError) as error:
            raise SortedNetError(f"bad trainer setting: {error}") from error
        if trainer.is_global_zero and not trainer_args["enable_model_summary"]:
            print(_model_line(module))
        with one_job_ranks(trainer), ranks.watched(trainer):
            # weights_only: a resumed checkpoint is read without unpickling arbitrary objects; a full save (with
            # optimizer and loops) is what resuming needs, said explicitly so Lightning does not note its default.
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
            # Validation-time checkpoints can miss the last steps; last.ckpt is always the end of training.
            last = checkpoints.format_checkpoint_name({}, checkpoints.CHECKPOINT_NAME_LAST)
            trainer.save_checkpoint(last, weights_only=False)
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


@hydra.main(version_base="1.3", config_path="conf", config_name="train")  # shipped in the package
def main(cfg: DictConfig) -> None:
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        train(OmegaConf.to_object(cfg), resolved, cfg)
    except MissingMandatoryValue as error:
        _fail(f"{error.full_key} has no value; set it on the command line: {error.full_key}=...")
    except SortedNetError as error:
        _fail(str(error))


def _fail(message: str) -> None:
    print(f"sortednet: error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    try:
        check_command_line(sys.argv[1:])
    except SortedNetError as error:
        _fail(str(error))
    main()
