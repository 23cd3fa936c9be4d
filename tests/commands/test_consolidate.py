"""`python -m sortednet.consolidate`: a training checkpoint as one Hugging Face model directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import one_line_error, run_main, save_tiny
from sortednet.consolidate import EXIT_HEADS_FILE, main


def _sorted_ckpt(path: Path, model_dir: Path, tokenizer_dir: Path, exits=(2, 4), heads=()) -> dict:
    """A checkpoint as ``sortednet.train`` writes it (``SortedModule.on_save_checkpoint``): net.lm.*, the ICT
    heads as net.exit_heads.<e>.*, and the ``sortednet`` metadata."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(model_dir)
    state = {f"net.lm.{k}": v for k, v in lm.state_dict().items()}
    torch.manual_seed(1)
    for e in heads:
        state[f"net.exit_heads.{e}.weight"] = torch.randn_like(lm.lm_head.weight)
    meta = {
        "objective": "ict" if heads else "soft",
        "exits": list(exits),
        "num_layers": lm.config.num_hidden_layers,
        "exit_heads": list(heads),
        "hf_config": lm.config.to_dict(),
        "model": str(model_dir),
        "tokenizer": str(tokenizer_dir),
        "prompt_style": "alpaca",
    }
    torch.save({"state_dict": state, "sortednet": meta, "global_step": 5}, path)
    return state


@pytest.fixture
def tiny(tmp_path, embedded_root) -> dict:
    model_dir = save_tiny("llama", tmp_path / "base")
    return {"model": model_dir, "tokenizer": embedded_root / "tokenizer"}


def test_single_file_checkpoint_round_trip(tmp_path, tiny, capsys):
    from transformers import AutoModelForCausalLM

    from sortednet.inference.load import load_sorted

    ckpt = tmp_path / "last.ckpt"
    state = _sorted_ckpt(ckpt, tiny["model"], tiny["tokenizer"])
    out = tmp_path / "exports" / "full"
    code, stdout, err = run_main(main, [f"ckpt={ckpt}", f"out={out}"], capsys)
    assert code == 0, err
    assert "soft, 4 layers, exits [2, 4]" in stdout and str(out) in stdout

    lm = AutoModelForCausalLM.from_pretrained(out)  # no sortednet code
    for key, value in lm.state_dict().items():
        assert torch.equal(value, state[f"net.lm.{key}"]), key
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".safetensors", ".bin")) == ["model.safetensors"]
    entry = json.loads((out / "config.json").read_text())["sortednet"]
    assert entry["exit"] == entry["num_layers"] == 4 and entry["exits"] == [2, 4] and entry["objective"] == "soft"
    assert entry["exit_heads"] == [] and entry["prompt_style"] == "alpaca" and entry["global_step"] == 5
    assert sorted(p.name for p in out.parent.iterdir()) == ["full"]  # built in a temp sibling, renamed

    net, tokenizer, meta = load_sorted(str(out))  # the inference loader: every exit of the set
    assert meta.exits == [2, 4] and meta.num_layers == 4
    reference, _, _ = load_sorted(str(ckpt))
    ids = torch.tensor([[1, 17, 42, 99, 3]])  # the tiny model has its own vocabulary of 101
    ours, theirs = net.exit_logits(ids, None, [2, 4]), reference.exit_logits(ids, None, [2, 4])
    for e in (2, 4):
        assert torch.equal(ours[e], theirs[e])


def test_ict_heads_are_kept_beside_the_model(tmp_path, tiny, capsys):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from sortednet.inference.load import load_sorted

    ckpt = tmp_path / "ict.ckpt"
    state = _sorted_ckpt(ckpt, tiny["model"], tiny["tokenizer"], exits=(2, 4), heads=(2,))
    out = tmp_path / "ict"
    code, stdout, err = run_main(main, [f"ckpt={ckpt}", f"out={out}", "dtype=bfloat16"], capsys)
    assert code == 0, err
    assert f"ICT heads [2] in {EXIT_HEADS_FILE}" in stdout
    heads = load_file(out / EXIT_HEADS_FILE)
    assert list(heads) == ["2.weight"] and torch.equal(heads["2.weight"], state["net.exit_heads.2.weight"].bfloat16())
    entry = json.loads((out / "config.json").read_text())["sortednet"]
    assert entry["exit_heads"] == [2] and entry["exit_heads_file"] == EXIT_HEADS_FILE
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    net, _, meta = load_sorted(str(out))  # the inference loader gets the ICT heads back
    assert meta.exits == [2, 4] and meta.exit_heads == [2]
    torch.testing.assert_close(net.head(2).weight, state["net.exit_heads.2.weight"].bfloat16(), rtol=0, atol=0)


def test_bad_input_is_one_line(tmp_path, tiny, capsys):
    ckpt = tmp_path / "last.ckpt"
    _sorted_ckpt(ckpt, tiny["model"], tiny["tokenizer"])
    # a checkpoint whose weights are another model's than its metadata says
    other = save_tiny("llama", tmp_path / "other", hidden_size=48, num_attention_heads=4)
    mixed = tmp_path / "mixed.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["sortednet"]["hf_config"] = json.loads((other / "config.json").read_text())
    torch.save(checkpoint, mixed)
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    cases = [
        ([f"ckpt={mixed}", f"out={tmp_path / 'a'}"], "different model"),
        ([f"ckpt={tmp_path / 'plain.ckpt'}", f"out={tmp_path / 'a'}"], "no sortednet metadata"),
        ([f"ckpt={tiny['model']}", f"out={tmp_path / 'a'}"], "Hugging Face model directory"),
        ([f"ckpt={tmp_path / 'nope.ckpt'}", f"out={tmp_path / 'a'}"], "not found"),
        ([f"ckpt={ckpt}", f"out={tmp_path / 'taken'}"], "non-empty directory"),
        ([f"ckpt={ckpt}", f"out={tmp_path / 'a'}", "dtype=int8"], "unknown dtype"),
        ([f"ckpt={ckpt}"], "out=DIR"),
    ]
    for args, message in cases:
        code, _, err = run_main(main, args, capsys)
        one_line_error(code, err, message)
    assert not (tmp_path / "a").exists() and (tmp_path / "taken" / "keep.txt").read_text() == "mine"
