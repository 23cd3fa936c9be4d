"""Atomic checkpoint writes: a save that dies half-way leaves the previous checkpoint intact and no temp file."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from conftest import compose_train
from sortednet import io as sortednet_io
from sortednet.io import write_dir_atomically
from sortednet.training.checkpointing import AtomicCheckpointIO, AtomicModelParallelStrategy


def _checkpoint(value: float) -> dict:
    return {"state_dict": {"net.w": torch.full((64, 64), value)}, "sortednet": {"exits": [2, 4]}, "global_step": 7}


class Crash(RuntimeError):
    pass


def _crashing_save(obj, file, *args, **kwargs):
    """torch.save that writes the first part of the file, then dies (a full disk, a kill signal, ...)."""
    import io

    buffer = io.BytesIO()
    _real_save(obj, buffer)
    file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    file.flush()
    raise Crash("killed mid-save")


_real_save = torch.save


def test_a_crash_mid_save_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    last = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(_checkpoint(1.0), last)
    before = last.read_bytes()

    monkeypatch.setattr(torch, "save", _crashing_save)
    with pytest.raises(Crash):
        io.save_checkpoint(_checkpoint(2.0), last)
    monkeypatch.undo()

    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no .last.ckpt.*.tmp left over
    assert last.read_bytes() == before
    loaded = io.load_checkpoint(last, weights_only=True)
    assert torch.equal(loaded["state_dict"]["net.w"], torch.full((64, 64), 1.0)) and loaded["global_step"] == 7

    io.save_checkpoint(_checkpoint(3.0), last)  # and a save that completes does replace it
    assert torch.equal(io.load_checkpoint(last, weights_only=True)["state_dict"]["net.w"], torch.full((64, 64), 3.0))
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
    assert (last.stat().st_mode & 0o777) == (0o666 & ~_umask())  # not mkstemp's 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_shards(value: str, crash_after: int | None = None):
    def write(tmp: Path) -> None:
        for i in range(3):
            if crash_after is not None and i == crash_after:
                raise Crash("killed mid-save")
            (tmp / f"__{i}_0.distcp").write_text(f"{value}{i}")
        (tmp / "meta.pt").write_text(value)

    return write


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "rename-aside"])
def test_a_crash_mid_directory_save_keeps_the_previous_directory(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(sortednet_io, "_exchange", lambda a, b: False)  # file systems without RENAME_EXCHANGE
    last = tmp_path / "last.ckpt"
    write_dir_atomically(last, _write_shards("old"), if_exists="replace")
    with pytest.raises(Crash):
        write_dir_atomically(last, _write_shards("new", crash_after=1), if_exists="replace")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert {p.name: p.read_text() for p in last.iterdir()} == {
        "__0_0.distcp": "old0",
        "__1_0.distcp": "old1",
        "__2_0.distcp": "old2",
        "meta.pt": "old",
    }
    write_dir_atomically(last, _write_shards("new"), if_exists="replace")
    assert (last / "meta.pt").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    write_dir_atomically(tmp_path / "fresh.ckpt", _write_shards("x"), if_exists="replace")  # no previous one
    assert (tmp_path / "fresh.ckpt" / "meta.pt").read_text() == "x"


def test_a_directory_written_by_another_process_first_is_kept(tmp_path):
    cache = tmp_path / "cache"
    write_dir_atomically(cache, _write_shards("theirs"), if_exists="keep")
    write_dir_atomically(cache, _write_shards("ours"), if_exists="keep")
    assert (cache / "meta.pt").read_text() == "theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    assert (cache.stat().st_mode & 0o777) == (0o777 & ~_umask())  # not mkdtemp's 0700


def test_a_refused_directory_is_left_as_it_was(tmp_path):
    from sortednet.errors import SortedNetError

    out = tmp_path / "out"
    out.mkdir(mode=0o750)
    out.chmod(0o750)
    write_dir_atomically(out, _write_shards("new"), if_exists="refuse")  # an empty directory is filled
    assert (out / "meta.pt").read_text() == "new" and (out.stat().st_mode & 0o777) == 0o750
    with pytest.raises(SortedNetError, match=r"out=.* appeared while it was written; nothing was written there"):
        write_dir_atomically(out, _write_shards("other"), if_exists="refuse")
    assert (out / "meta.pt").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("strategy", ["single", "ddp", "fsdp"])
def test_every_strategy_writes_checkpoints_atomically(strategy):
    from sortednet.training.strategy import configure_strategy

    devices = ["trainer.devices=2"] if strategy != "single" else []
    args = configure_strategy(compose_train(f"strategy={strategy}", *devices))
    trainer = L.Trainer(**args, logger=False, enable_progress_bar=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    if strategy == "fsdp":
        assert isinstance(trainer.strategy, AtomicModelParallelStrategy)
        assert isinstance(trainer.strategy, ModelParallelStrategy)
        assert trainer.strategy.saves_distributed_checkpoint
