"""A training run's directory: one run per directory, checked before Hydra or Lightning writes anything.

- A run directory (``hydra.run.dir``) that already holds files is refused: a second run would overwrite the
  first one's ``last.ckpt``, ``metrics.csv``, ``exit_report.txt`` and ``.hydra/``.
- Resuming (``ckpt_path=...``) into a directory that holds a run extends it instead: this run writes into a
  new ``resume-K`` subdirectory of it (K = 1, 2, ...), so nothing of the earlier run is overwritten and the
  next resume can start from ``RUN/resume-K/checkpoints/last.ckpt``.
- A sweep directory (``hydra.sweep.dir``) that already holds files is refused the same way.
- ``.hydra/`` (the composed config, Hydra's config and the overrides) is written by :func:`save_run_config`
  once the run's settings, data and model passed their checks, not by Hydra before them (``conf/train.yaml``
  sets ``hydra.output_subdir: null``), so a refused run leaves at most its new, empty directory.

Ranks other than 0 (started by Lightning, torchrun or SLURM into rank 0's directory) skip all of this.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from sortednet.errors import SortedNetError

RESUME_PREFIX = "resume-"


def is_first_rank() -> bool:
    """Whether this process is global rank 0 (or not part of a distributed launch)."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):  # torchrun, SLURM, Lightning's own children
        if os.environ.get(key, "0") != "0":
            return False
    return True


def _create(path: Path, key: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SortedNetError(
            f"cannot create {key}={str(path)!r} ({error.strerror}); pick a directory you can write: {key}=DIR"
        ) from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise SortedNetError(f"{key}={str(path)!r} is not writable; pick a directory you can write: {key}=DIR")


def _holds_files(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def next_resume_dir(run_dir: Path) -> Path:
    """``run_dir/resume-K`` with K one above the highest existing one."""
    taken = [p.name.removeprefix(RESUME_PREFIX) for p in run_dir.glob(f"{RESUME_PREFIX}*")]
    return run_dir / f"{RESUME_PREFIX}{max([int(k) for k in taken if k.isdigit()], default=0) + 1}"


def claim_run_dir(run_dir: Path, resuming: bool) -> Path:
    """The directory this run writes into: ``run_dir`` when new or empty, a new ``resume-K`` in it when
    resuming into a directory that holds a run; a one-line error otherwise. Creates it."""
    if run_dir.exists() and not run_dir.is_dir():
        raise SortedNetError(f"hydra.run.dir={str(run_dir)!r} is a file; pick a new directory: hydra.run.dir=DIR")
    if _holds_files(run_dir):
        if not resuming:
            raise SortedNetError(
                f"hydra.run.dir={str(run_dir)!r} already holds a run; pick a new directory (hydra.run.dir=DIR) or "
                f"resume it with ckpt_path=..., which writes into a new resume-K subdirectory"
            )
        run_dir = next_resume_dir(run_dir)
    _create(run_dir, "hydra.run.dir")
    return run_dir


class RunDirGuard(Callback):
    """Hydra callback (``conf/train.yaml``): applies :func:`claim_run_dir` before Hydra creates the run
    directory, and refuses a sweep directory that holds files. A refusal is one line and exit status 2."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_first_rank():
            return
        run_dir = Path(config.hydra.run.dir).absolute()
        claimed = _or_exit(lambda: claim_run_dir(run_dir, bool(config.get("ckpt_path"))))
        if claimed != run_dir:
            print(f"sortednet: {run_dir} holds a run; this resumed run writes into {claimed}", file=sys.stderr)
            with read_write(config), open_dict(config):
                config.hydra.run.dir = str(claimed)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_first_rank():
            return
        sweep_dir = Path(config.hydra.sweep.dir).absolute()

        def check() -> None:
            if _holds_files(sweep_dir):
                raise SortedNetError(
                    f"hydra.sweep.dir={str(sweep_dir)!r} already holds files; pick a new one: hydra.sweep.dir=DIR"
                )
            _create(sweep_dir, "hydra.sweep.dir")

        _or_exit(check)


def _or_exit(check):
    try:
        return check()
    except SortedNetError as error:
        print(f"sortednet: error: {error}", file=sys.stderr)
        sys.exit(2)


def save_run_config(run_dir: Path, task_config: DictConfig) -> None:
    """Write ``run_dir/.hydra/{config,hydra,overrides}.yaml`` as Hydra would have (rank 0 only)."""
    if not is_first_rank() or not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    out = run_dir / ".hydra"
    out.mkdir(parents=True, exist_ok=True)
    task = OmegaConf.masked_copy(task_config, [k for k in task_config if k != "hydra"])
    OmegaConf.save(task, out / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), out / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(hydra_cfg.overrides.task)), out / "overrides.yaml")
