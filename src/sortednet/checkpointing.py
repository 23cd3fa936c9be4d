"""Atomic checkpoint writes: a save that dies half-way never replaces a good checkpoint.

- **Single files** (``strategy=single|ddp``, and ``strategy=fsdp`` with ``save_distributed_checkpoint=false``):
  :class:`AtomicCheckpointIO` writes the checkpoint to a hidden temporary file in the target's directory
  (``.NAME.XXXX.tmp``), flushes and fsyncs it, ``os.replace``-s it onto the target (atomic on POSIX within
  one file system) and fsyncs the directory, so the rename itself survives a power cut. Readers see the old
  file or the new one, never a mix. A save that raises removes its temporary file.
- **Distributed checkpoints** (``strategy=fsdp``, a directory of shards per checkpoint):
  :class:`AtomicModelParallelStrategy` has every rank write its shard into a hidden temporary sibling
  directory (torch's writer fsyncs each shard; rank 0 fsyncs ``meta.pt`` and the directory), waits for all
  ranks, then rank 0 puts the directory in place: by one ``renameat2(RENAME_EXCHANGE)`` swap where the file
  system supports it (Linux ext4/xfs/tmpfs/btrfs: atomic), else by renaming the old checkpoint aside, the new
  one into place, and deleting the old (a crash between the two renames leaves no ``NAME`` but the old,
  complete checkpoint as ``.NAME.XXXX.old``, to be renamed back by hand).

A process killed outright (SIGKILL, node loss) during a save leaves its hidden ``.NAME.XXXX.tmp`` behind —
never a partial ``NAME``; such leftovers are safe to delete. Object stores (``s3://`` …) go through
Lightning's own fsspec transaction.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot open or fsync directories
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(obj: Any, path: str | os.PathLike, save: Callable[[Any, Any], None] | None = None) -> None:
    """``torch.save(obj, path)`` (or ``save(obj, file)``) so that ``path`` is either untouched or complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            (save or torch.save)(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would otherwise become the checkpoint's mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with :func:`atomic_save`: temporary file, fsync, ``os.replace``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, path)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``; False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_dir(new: Path, target: Path) -> None:
    """Put the complete directory ``new`` at ``target`` (a sibling), replacing whatever ``target`` holds."""
    if not os.path.lexists(target):
        os.rename(new, target)
    elif _exchange(new, target):  # target is now the new checkpoint, `new` the old one
        _remove(new)
    else:
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        old.rmdir()
        os.rename(target, old)
        os.rename(new, target)
        _remove(old)
    _fsync_dir(target.parent)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def write_dir_atomically(target: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary sibling of ``target``, then :func:`replace_dir`; ``target`` is never left
    half-written. One process; :class:`AtomicModelParallelStrategy` is the same over ranks."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would otherwise become the checkpoint's mode
        write(tmp)
        _sync_tree(tmp)
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sync_tree(root: Path) -> None:
    for file in root.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(root)


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` (FSDP2) whose distributed checkpoints are written atomically.

    Lightning writes a distributed checkpoint into the target directory in place (an existing ``last.ckpt``
    directory is overwritten shard by shard), so a crash mid-save leaves a mix of two checkpoints. Here every
    rank writes into one temporary sibling directory (its name chosen by rank 0 and broadcast; it lies next
    to the target, so on the same shared file system), all ranks meet at a barrier, and rank 0 swaps the
    directory into place (see :func:`replace_dir`); a second barrier keeps the others from reading it early.
    Single-file checkpoints (``save_distributed_checkpoint=False``) go through the ``CheckpointIO`` plugin.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        if not self._save_distributed_checkpoint or storage_options is not None:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        target = Path(self.broadcast(str(filepath)))
        tmp = None
        if self.global_rank == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.chmod(tmp, 0o777 & ~_umask())  # not mkdtemp's 0700
        tmp = Path(self.broadcast(tmp))
        try:
            super().save_checkpoint(checkpoint, tmp)
            self.barrier("sortednet_checkpoint_written")
            if self.global_rank == 0:
                _sync_tree(tmp)
                replace_dir(tmp, target)
        finally:
            if self.global_rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
        self.barrier("sortednet_checkpoint_in_place")
