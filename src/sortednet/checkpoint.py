"""Reading sortednet checkpoints, without Lightning: a ``.ckpt`` file or a distributed checkpoint directory.

``sortednet.train`` writes one file (single, ddp, fsdp gathered) or, under FSDP, a directory of shards
(``torch.distributed.checkpoint``) with Lightning's non-tensor part in ``meta.pt``. Both carry a ``sortednet``
metadata entry (objective, exits, the Hugging Face config, model and tokenizer sources, prompt style).
Everything here loads on the CPU with ``weights_only=True`` (no arbitrary unpickling) and memory-maps single
files, so a caller that needs only part of a checkpoint does not hold all of it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from sortednet.errors import SortedNetError

META_FILE = "meta.pt"  # Lightning's non-tensor part of a distributed checkpoint
MODEL_KEY = "state_dict"


def _load_file(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError as error:
        raise SortedNetError(f"checkpoint {str(path)!r} not found") from error
    except Exception as error:
        raise SortedNetError(
            f"{str(path)!r} is not a readable checkpoint ({type(error).__name__}); pass a .ckpt written by "
            f"sortednet.train"
        ) from error


def read_checkpoint(path: str) -> dict:
    """A Lightning checkpoint file written by sortednet (memory-mapped), or a one-line error."""
    checkpoint = _load_file(Path(path).expanduser())
    if not isinstance(checkpoint, dict) or "sortednet" not in checkpoint or MODEL_KEY not in checkpoint:
        raise SortedNetError(f"{path!r} has no sortednet metadata; pass a checkpoint written by sortednet.train")
    return checkpoint


def _distributed_dir(path: Path, given: str) -> Path:
    if not path.is_dir():
        raise SortedNetError(f"checkpoint {given!r} not found; pass a .ckpt file or a checkpoint directory")
    if not (path / META_FILE).is_file() or not (path / ".metadata").is_file():
        what = "a Hugging Face model directory" if (path / "config.json").is_file() else "a directory"
        raise SortedNetError(
            f"{given!r} is {what}, not a distributed checkpoint of sortednet.train (no {META_FILE} and .metadata); "
            f"pass a .ckpt or a checkpoint directory from a strategy=fsdp run"
        )
    return path


def read_metadata(ckpt: str) -> dict:
    """The ``sortednet`` metadata of a checkpoint file or directory (plus ``global_step``), weights unread."""
    path = Path(ckpt).expanduser()
    if path.is_file():
        checkpoint = read_checkpoint(ckpt)
    else:
        checkpoint = _load_file(_distributed_dir(path, ckpt) / META_FILE)
        if not isinstance(checkpoint, dict) or "sortednet" not in checkpoint:
            raise SortedNetError(f"{ckpt!r} has no sortednet metadata; pass a checkpoint written by sortednet.train")
    return {**checkpoint["sortednet"], "global_step": checkpoint.get("global_step")}


def read_sorted_checkpoint(ckpt: str) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state_dict, metadata)`` of a sortednet checkpoint — a ``.ckpt`` file or a distributed checkpoint
    directory — on the CPU, full (unsharded) tensors; a one-line error for anything else."""
    path = Path(ckpt).expanduser()
    if path.is_file():
        checkpoint = read_checkpoint(ckpt)
        return checkpoint[MODEL_KEY], {**checkpoint["sortednet"], "global_step": checkpoint.get("global_step")}
    meta = read_metadata(ckpt)
    try:
        state = _read_distributed_model(path)
    except Exception as error:
        raise SortedNetError(
            f"cannot read the shards of {ckpt!r} ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
        ) from error
    return state, meta


def _read_distributed_model(path: Path) -> dict[str, torch.Tensor]:
    """The model's full tensors from a distributed checkpoint, in this one process (no process group): only
    ``state_dict.*`` is read, never the optimizer states (2-3x the weights). The tensors are allocated from the
    checkpoint's own metadata and filled by ``torch.distributed.checkpoint.load``, which reassembles the shards."""
    reader = dcp.FileSystemReader(str(path))
    prefix = f"{MODEL_KEY}."
    state = {
        key[len(prefix) :]: torch.empty(item.size, dtype=item.properties.dtype)
        for key, item in reader.read_metadata().state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(item, dcp.TensorStorageMetadata)
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp.load({MODEL_KEY: state}, storage_reader=reader, no_dist=True)
    return state
