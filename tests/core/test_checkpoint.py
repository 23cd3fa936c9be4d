"""The checkpoint contract (`sortednet.checkpoint`) as a user relies on it: the record a training checkpoint
carries, the record an exported or consolidated directory carries, and `load_sorted` reading all three kinds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import one_line, one_line_error, run_main, save_checkpoint
from sortednet import consolidate, export
from sortednet.checkpoint import ExportRecord, Metadata, read_metadata
from sortednet.errors import SortedNetError
from sortednet.inference.load import load_sorted

IDS = torch.tensor([[1, 17, 42, 99, 3, 60, 7]])


def _raw(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def exported(ckpts, tmp_path_factory) -> dict[str, Path]:
    """soft4: exit 4 of the soft checkpoint, exported from a relative path; soft4_2: exit 2 exported from soft4;
    ict4: exit 4 of the ICT checkpoint; ict_all: the ICT checkpoint consolidated."""
    root = tmp_path_factory.mktemp("exported")
    soft = ckpts["soft"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(soft.parent)  # a relative ckpt=: the record must still name the absolute path
        assert export.main([f"ckpt={soft.name}", "exit=4", f"out={root / 'soft4'}"]) == 0
    assert export.main([f"ckpt={root / 'soft4'}", "exit=2", f"out={root / 'soft4_2'}"]) == 0
    assert export.main([f"ckpt={ckpts['ict']}", "exit=4", f"out={root / 'ict4'}"]) == 0
    assert consolidate.main([f"ckpt={ckpts['ict']}", f"out={root / 'ict_all'}"]) == 0
    return {name: root / name for name in ("soft4", "soft4_2", "ict4", "ict_all")}


def test_the_record_round_trips(ckpts):
    stored = _raw(ckpts["soft"])["sortednet"]
    meta = read_metadata(str(ckpts["soft"]))
    assert isinstance(meta, Metadata)
    assert meta.to_record() == stored
    assert meta.source == str(ckpts["soft"]) and meta.global_step == 0  # known when read, not stored
    assert not {"source", "global_step", "exported_from"} & set(stored)
    assert meta.exits == [2, 4, 6, 8] and meta.num_layers == 8 and meta.exported_from is None


def test_an_exported_sub_model_names_its_first_source(ckpts, exported):
    meta = read_metadata(str(exported["soft4"]))
    assert isinstance(meta.exported_from, ExportRecord)
    assert meta.exported_from.source == str(ckpts["soft"].absolute())
    assert meta.exported_from.exit == 4 and meta.exported_from.num_layers == 8
    assert meta.num_layers == 4 and meta.exits == [2, 4] and meta.exit_heads == []
    assert meta.prompt_template is not None and meta.source == str(exported["soft4"])

    again = read_metadata(str(exported["soft4_2"]))  # an export of an export
    assert again.exported_from.source == str(ckpts["soft"].absolute())
    assert again.exported_from.exit == 2 and again.exported_from.num_layers == 8
    assert again.exported_from.exits == [2, 4, 6, 8]
    assert again.num_layers == 2 and again.exits == [2]


def test_ict_sub_model_serves_its_own_exit_consolidated_keeps_every_head(ckpts, exported):
    sub = read_metadata(str(exported["ict4"]))
    assert sub.exits == [4] and sub.exit_heads == []  # exit 2 of it would read exit 4's head, not its own
    assert sub.exported_from.exit_heads == [2, 4, 6]  # the source's, for the record

    whole = read_metadata(str(exported["ict_all"]))
    assert whole.exits == [2, 4, 6, 8] and whole.exit_heads == [2, 4, 6]
    assert whole.exported_from.consolidated and whole.num_layers == 8

    ours, _, meta = load_sorted(str(exported["ict_all"]))
    theirs, _, _ = load_sorted(str(ckpts["ict"]))
    assert meta.exit_heads == [2, 4, 6] and ours.head(2) is not ours.lm_head
    with torch.no_grad():
        got, want = ours.exit_logits(IDS, None, [2, 8]), theirs.exit_logits(IDS, None, [2, 8])
    for e in (2, 8):
        torch.testing.assert_close(got[e], want[e], rtol=0, atol=0)


def test_a_lower_exit_of_an_ict_sub_model_is_refused(exported, tmp_path, capsys):
    """Exit 2 of the ICT sub-model 4 would be layers 1-2 read through exit 4's head: not the source's exit 2."""
    code, _, err = run_main(export.main, [f"ckpt={exported['ict4']}", "exit=2", f"out={tmp_path / 'x'}"], capsys)
    one_line_error(code, err, "exit 4's own (ICT) head", "from the training checkpoint")
    assert not (tmp_path / "x").exists()


def test_an_exported_directory_is_not_a_training_checkpoint(exported):
    with pytest.raises(SortedNetError) as error:
        read_metadata(str(exported["soft4"]), exported=False)
    assert "not a training checkpoint" in one_line(error)


@pytest.mark.parametrize("missing", ["exits", "num_layers", "source", "exit"])
def test_an_incomplete_export_record_is_one_line(exported, tmp_path, missing):
    broken = shutil.copytree(exported["soft4"], tmp_path / "broken")
    config = json.loads((broken / "config.json").read_text())
    del config["sortednet"][missing]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(SortedNetError) as error:  # not a TypeError or KeyError
        load_sorted(str(broken))
    assert str(broken) in one_line(error)


def test_a_record_older_than_precision_still_loads(ckpts, tmp_path):
    raw = _raw(ckpts["soft"])
    old = {k: v for k, v in raw["sortednet"].items() if k != "precision"}
    meta = read_metadata(str(save_checkpoint(tmp_path / "old.ckpt", raw["state_dict"], old)))
    assert meta.precision is None and meta.exits == [2, 4, 6, 8]
    net, _, loaded = load_sorted(str(tmp_path / "old.ckpt"))
    assert loaded.precision is None and net.num_layers == 8

    new = {**raw["sortednet"], "precision": "bf16-mixed"}  # and a record that has it keeps it
    assert read_metadata(str(save_checkpoint(tmp_path / "new.ckpt", {}, new))).precision == "bf16-mixed"
