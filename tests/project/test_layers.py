"""Layers point one way: decoding and exporting a checkpoint need the core, never the training stack."""

from __future__ import annotations

import subprocess
import sys

import torch

from conftest import save_tiny

PROBE = """
import sys
from sortednet import export, generate
assert export.main(["ckpt={ckpt}", "exit=2", "out={out}"]) == 0
assert generate.main(["ckpt={ckpt}", "prompt=Say hi.", "max_new_tokens=3", "exit=2"]) == 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "hydra", "pytorch_lightning"))
print("IMPORTED", heavy)
"""


def _sortednet_checkpoint(tmp_path, tokenizer_dir) -> str:
    """A checkpoint in the format sortednet.train writes (Lightning's dict with a ``sortednet`` entry), made here
    without Lightning so the probe below starts from nothing of the training stack."""
    from transformers import AutoModelForCausalLM

    model_dir = save_tiny("llama", tmp_path / "model", vocab_size=1024)  # the embedded tokenizer's size
    lm = AutoModelForCausalLM.from_pretrained(model_dir)
    config = {k: v for k, v in lm.config.to_dict().items() if k != "quantization_config"}
    meta = {
        "objective": "soft", "exits": [2, 4], "num_layers": 4, "exit_heads": [], "hf_config": config,
        "model": str(model_dir), "tokenizer": str(tokenizer_dir), "prompt_style": "alpaca", "lora": None,
        "quantization": None,
    }  # fmt: skip
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"net.lm.{k}": v for k, v in lm.state_dict().items()}, "sortednet": meta}, path)
    return str(path)


def test_generate_and_export_never_import_lightning_or_hydra(tmp_path, embedded_root):
    ckpt = _sortednet_checkpoint(tmp_path, embedded_root / "tokenizer")
    probe = PROBE.format(ckpt=ckpt, out=tmp_path / "exported")
    process = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-2000:]
    assert "IMPORTED []" in process.stdout, process.stdout[-500:]
