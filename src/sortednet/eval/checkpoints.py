"""The checkpoints a suite runs over: loaded one at a time, each with the exits asked of it.

``settings`` here and in every suite's ``run`` is the evaluate command's config (its ``device``, ``cache_dir``,
``exits``, ...), read by attribute: the library does not import the command.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from sortednet.checkpoint import Metadata
from sortednet.errors import SortedNetError
from sortednet.inference.load import load_sorted, resolve_device


@dataclass
class Checkpoint:
    """One checkpoint to evaluate, while it is loaded."""

    name: str
    path: str
    net: object = None
    tokenizer: object = None
    meta: Metadata | None = None
    exits: list[int] = field(default_factory=list)


def requested_exits(settings, meta: Metadata, name: str) -> list[int]:
    """The exits of ``exits=`` (all: the checkpoint's own), each checked to be one of the checkpoint's."""
    available = [int(e) for e in meta.exits]
    if settings.exits == "all":
        return available
    wanted = list(settings.exits)
    missing = [e for e in wanted if e not in available]
    if missing:
        raise SortedNetError(f"exits {missing} are not exits of {name} ({meta.source}); its exits are {available}")
    return sorted(set(wanted))


def each_checkpoint(settings, paths: list[str], names: list[str]) -> Iterator[Checkpoint]:
    """Each checkpoint loaded in turn (one in memory at a time), with its exits checked."""
    device = resolve_device(settings.device)
    for path, name in zip(paths, names, strict=True):
        net, tokenizer, meta = load_sorted(path, settings.cache_dir, device)
        ckpt = Checkpoint(name, path, net, tokenizer, meta, requested_exits(settings, meta, name))
        try:
            yield ckpt
        finally:
            ckpt.net = ckpt.tokenizer = None
            del net, tokenizer
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
