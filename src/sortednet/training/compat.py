"""The private parts of Lightning and torch that sortednet relies on, each because no public API serves, kept in
this one module so that an upgrade has one place to look. Every function here has a test in
``tests/training/test_compat.py`` that fails when the dependency changes what we rely on: run it first after an upgrade.
"""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

if TYPE_CHECKING:
    import torch


def spawns_ranks_by_rerunning_the_script(strategy) -> bool:
    """Whether ``trainer.fit`` will start ranks 1..N-1 itself by re-running this command line (ddp/fsdp with
    several devices, no SLURM/torchrun/... environment that started them): what :func:`sortednet.train.one_job_ranks`
    must prepare inside a Hydra sweep.

    Why private: Lightning exposes the launcher (``strategy.launcher``) but not what kind it is; its public
    ``is_interactive_compatible`` is also False for the spawn launcher, which does not re-run the script.
    """
    environment = getattr(strategy, "cluster_environment", None)
    return (
        isinstance(getattr(strategy, "launcher", None), _SubprocessScriptLauncher)
        and environment is not None
        and not environment.creates_processes_externally
    )


def launched_rank_processes(trainer) -> list[subprocess.Popen]:
    """The rank processes this process started (rank 0 under Lightning's subprocess launcher), else ``[]``.

    Why private: the subprocess launcher keeps its children in ``procs`` and no public API lists them; sortednet
    watches them so that a rank that dies ends the run instead of hanging its peers (:mod:`sortednet.training.ranks`).
    """
    return list(getattr(getattr(trainer.strategy, "launcher", None), "procs", None) or [])


def non_persistent_buffer_names(module: torch.nn.Module) -> list[str]:
    """The names of ``module``'s own buffers registered with ``persistent=False`` (rotary ``inv_freq``): those
    ``to_empty`` leaves as garbage and no checkpoint restores.

    Why private: torch tells persistence only through ``state_dict()``, which under FSDP2 runs its sharding
    hooks and recurses into every child; ``register_buffer(persistent=False)`` records the name in this set.
    """
    return sorted(n for n in getattr(module, "_non_persistent_buffers_set", ()) if getattr(module, n, None) is not None)


def rebuild_train_loader(trainer) -> None:
    """Have the fit loop build its train loader again when fit (re)starts, so that a sampler whose position was
    restored after the loader was built (sortednet's exact mid-epoch resume) is read from that position.

    Why private: Lightning rebuilds the loader only when it has none or on a ``reload_dataloaders_every_n_epochs``
    schedule; no public call asks for one rebuild.
    """
    trainer.fit_loop._combined_loader = None
