"""Experiment loggers: W&B (online with credentials, offline without), CSV, or none."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, WandbLogger

from sortednet.errors import SortedNetError
from sortednet.tracking import wandb_credentials


def build_logger(settings: dict, run_dir: str, name: str, group: str | None, config: dict):
    """A Lightning logger from ``logger.*`` settings, or ``False`` for none."""
    settings = dict(settings)
    kind = settings.pop("kind", "wandb")
    if kind == "none":
        return False
    if kind == "csv":
        return CSVLogger(save_dir=run_dir, name="csv", version="")
    if kind == "wandb":
        mode = settings.pop("mode", "auto")
        if mode not in ("auto", "online", "offline"):
            raise SortedNetError(f"logger.mode={mode!r}; use auto, online or offline")
        offline = mode == "offline" or (mode == "auto" and not wandb_credentials())
        return WandbLogger(
            name=name,
            group=group,
            save_dir=run_dir,
            offline=offline,
            config=config,
            log_model=False,
            **settings,
        )
    raise SortedNetError(f"unknown logger kind {kind!r}; use logger=wandb, logger=csv or logger=none")


def describe(logger) -> str:
    """Where the logs went, and for an offline W&B run the command that uploads it."""
    if not logger:
        return "no logger"
    if isinstance(logger, WandbLogger):
        run = logger.experiment
        group = f" (group {run.group})" if run.group else ""
        if getattr(run, "offline", False) or run.settings.mode in ("offline", "dryrun"):
            run_dir = Path(run.dir).parent
            return f"W&B offline run {run_dir}{group}; upload it with: wandb sync {run_dir}"
        return f"W&B run {run.url}{group}"
    return f"{type(logger).__name__} {logger.log_dir}"


def finish(logger) -> None:
    """Close a W&B run so that the next Hydra multirun job starts its own."""
    if isinstance(logger, WandbLogger):
        import wandb  # lazy: slow to import, and only a W&B run (logger=wandb) needs it

        wandb.finish()
