"""LoRA adapters under the sorted loss, adapter-only checkpoints merged at load, and QLoRA's one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sortednet.config import LoraConfig, ModelConfig, ObjectiveConfig
from sortednet.data.embedded import make_rows
from sortednet.errors import SortedNetError
from sortednet.hub import load_causal_lm
from sortednet.inference.load import load_sorted
from sortednet.lora import LoRALinear, add_lora_, lora_state, merge_lora_
from sortednet.model import SortedLM
from sortednet.module import SortedModule, exit_losses
from test_train import _ckpt, _ok, run_cli

LORA = ["model.lora.rank=4", "model.lora.alpha=8"]


def _batch(tokenizer, n: int = 4):
    ids = torch.randint(3, len(tokenizer), (n, 12))
    return ids, torch.ones_like(ids), ids.clone()


def test_adapters_start_as_the_base_model_and_only_they_train(cache_dir, tokenizer):
    lm = load_causal_lm("embedded", cache_dir=cache_dir)
    ids, mask, labels = _batch(tokenizer)
    reference = SortedLM(lm).exit_logits(ids, mask, [2, 8])
    wrapped = add_lora_(lm, LoraConfig(rank=4, targets=["q_proj", "down_proj"]))
    assert len(wrapped) == 2 * lm.config.num_hidden_layers
    net = SortedLM(lm)
    for e, logits in net.exit_logits(ids, mask, [2, 8]).items():  # B = 0: the update is zero at the start
        torch.testing.assert_close(logits, reference[e])
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    loss, _ = exit_losses(net, ids, mask, labels, [2, 8])
    loss.backward()
    # every adapter below the deepest exit gets gradient; B's gradient is non-zero from the first step
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in net.named_parameters() if "lora_B" in n)
    assert net.head(8).weight.grad is None and lm.get_input_embeddings().weight.grad is None


def test_merge_folds_the_update_into_plain_linears(cache_dir, tokenizer):
    lm = load_causal_lm("embedded", cache_dir=cache_dir)
    add_lora_(lm, LoraConfig(rank=2))
    for module in lm.modules():
        if isinstance(module, LoRALinear):
            torch.nn.init.normal_(module.lora_B, std=0.05)
    ids, mask, _ = _batch(tokenizer)
    before = SortedLM(lm.eval()).exit_logits(ids, mask, [4, 8])
    assert merge_lora_(lm) == 7 * lm.config.num_hidden_layers
    assert not any(isinstance(m, LoRALinear) for m in lm.modules()) and not lora_state(lm)
    after = SortedLM(lm).exit_logits(ids, mask, [4, 8])
    for e in before:
        torch.testing.assert_close(after[e], before[e], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, cache_dir) -> Path:
    root = tmp_path_factory.mktemp("lora")
    data = root / "rows.json"
    data.write_text(json.dumps(make_rows(48)))
    overrides = [f"data.path={data}", "data.val_size=8", "data.batch_size=8", "eval.num_generate=0", "logger=csv"]
    _ok(run_cli(root, "run", *overrides, *LORA, "trainer.max_steps=4", "optimizer.lr=1e-2"))
    return root / "run"


def test_lora_checkpoint_holds_adapters_and_loads_merged(lora_run, cache_dir, tokenizer):
    checkpoint = _ckpt(lora_run)
    keys = set(checkpoint["state_dict"])
    assert keys and all(k.endswith(("lora_A", "lora_B")) for k in keys)
    assert checkpoint["sortednet"]["lora"]["rank"] == 4 and checkpoint["sortednet"]["quantization"] is None
    trained_B = [v for k, v in checkpoint["state_dict"].items() if k.endswith("lora_B")]
    assert any(v.abs().sum() > 0 for v in trained_B)  # the adapters moved

    # the same adapters on the base model, unmerged, against the loader's merged model
    module = SortedModule(ModelConfig(lora=LoraConfig(rank=4, alpha=8)), ObjectiveConfig(), exits=[2, 4, 6, 8])
    module.cache_dir = str(cache_dir)
    module.configure_model()
    module.load_state_dict(checkpoint["state_dict"], strict=False)
    net, _, meta = load_sorted(str(lora_run / "checkpoints" / "last.ckpt"), cache_dir)
    assert meta["lora"]["rank"] == 4 and not any(isinstance(m, LoRALinear) for m in net.modules())
    ids, mask, _ = _batch(tokenizer)
    expected = module.net.eval().exit_logits(ids, mask, [2, 8])
    for e, logits in net.exit_logits(ids, mask, [2, 8]).items():
        torch.testing.assert_close(logits, expected[e], rtol=1e-4, atol=1e-4)


def test_lora_run_resumes_from_its_adapter_checkpoint(lora_run, tmp_path, cache_dir):
    ckpt = lora_run / "checkpoints" / "last.ckpt"
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(make_rows(48)))
    overrides = [f"data.path={data}", "data.val_size=8", "data.batch_size=8", "eval.num_generate=0", "logger=csv"]
    _ok(run_cli(tmp_path, "resumed", *overrides, *LORA, "trainer.max_steps=6", f"ckpt_path={ckpt}"))
    assert _ckpt(tmp_path / "resumed")["global_step"] == 6


def test_bad_adapter_settings_are_one_line_errors(tmp_path, cache_dir):
    cases = [
        (["model.quantization=nf4"], "add model.lora.rank=16"),
        (["model.quantization=nf4", *LORA], "no CUDA device is visible"),
        (["model.quantization=int3", *LORA], "unknown model.quantization"),
        ([*LORA, "strategy=fsdp", "trainer.devices=2"], "FSDP2 sharding of adapters is not supported"),
        ([*LORA, "model.lora.targets=[no_such]"], "matched no linear layer"),
    ]
    for overrides, message in cases:
        process = run_cli(tmp_path, "bad", "logger=csv", *overrides)
        assert process.returncode != 0, overrides
        assert message in process.stderr and "Traceback" not in process.stderr, (overrides, process.stderr[-800:])
    with pytest.raises(SortedNetError, match="drop model.lora.rank"):
        SortedModule(ModelConfig(lora=LoraConfig(rank=4)), ObjectiveConfig(name="ict", init_from="x.ckpt"))
