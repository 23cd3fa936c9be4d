"""Atomic checkpoint writes: a save that dies half-way never replaces a good checkpoint. The writing itself is
:mod:`sortednet.io`'s; here it is plugged into Lightning.

- **Single files** (``strategy=single|ddp``, and ``strategy=fsdp`` with ``save_distributed_checkpoint=false``):
  :class:`AtomicCheckpointIO` saves through :func:`sortednet.io.write_file_atomically` (a hidden temporary
  sibling, fsync, ``os.replace``, fsync of the directory). A save that raises removes its temporary file.
- **Distributed checkpoints** (``strategy=fsdp``, a directory of shards per checkpoint):
  :class:`AtomicModelParallelStrategy` has every rank write its shard into a hidden temporary sibling
  directory, waits for all ranks, then rank 0 puts the directory in place with :func:`sortednet.io.replace_dir`
  (an atomic swap where the file system supports it).

Object stores (``s3://`` …) go through Lightning's own fsspec transaction.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy

from sortednet.io import new_dir_mode, replace_dir, sync_tree, write_file_atomically


def _torch_save(obj: Any, path: Path) -> None:
    with open(path, "wb") as file:
        torch.save(obj, file)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` whose saves are atomic (:func:`sortednet.io.write_file_atomically`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        write_file_atomically(path, lambda tmp: _torch_save(checkpoint, tmp))


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` (FSDP2) whose distributed checkpoints are written atomically.

    Lightning writes a distributed checkpoint into the target directory in place (an existing ``last.ckpt``
    directory is overwritten shard by shard), so a crash mid-save leaves a mix of two checkpoints. Here every
    rank writes into one temporary sibling directory (its name chosen by rank 0 and broadcast; it lies next
    to the target, so on the same shared file system), all ranks meet at a barrier, and rank 0 swaps the
    directory into place (see :func:`replace_dir`); a second barrier keeps the others from reading it early.
    Single-file checkpoints (``save_distributed_checkpoint=False``) go through the ``CheckpointIO`` plugin.
    """

    def __init__(self, *args: Any, save_distributed_checkpoint: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)
        # kept here, from the constructor's public argument: Lightning keeps it only in a private attribute
        self.saves_distributed_checkpoint = save_distributed_checkpoint

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        if not self.saves_distributed_checkpoint or storage_options is not None:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        target = Path(self.broadcast(str(filepath)))
        tmp = None
        if self.global_rank == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.chmod(tmp, new_dir_mode())  # not mkdtemp's 0700
        tmp = Path(self.broadcast(tmp))
        try:
            super().save_checkpoint(checkpoint, tmp)
            self.barrier("sortednet_checkpoint_written")
            if self.global_rank == 0:
                sync_tree(tmp)
                replace_dir(tmp, target)
        finally:
            if self.global_rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
        self.barrier("sortednet_checkpoint_in_place")
