"""LoRA adapters (PEFT) under the sorted loss, adapter-only checkpoints merged at load, PEFT adapter export, and
QLoRA's one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_checkpoint, run_cli, save_checkpoint, sorted_module, succeeded, train_in_process
from sortednet import export
from sortednet.config import LoraConfig, ModelConfig, ObjectiveConfig
from sortednet.embedded import make_rows
from sortednet.errors import SortedNetError
from sortednet.hub import load_causal_lm
from sortednet.inference.load import load_sorted
from sortednet.lora import add_lora_
from sortednet.model import SortedLM
from sortednet.objectives import build_net

LORA = ["model.lora.rank=4", "model.lora.alpha=8"]
ADAPTER = (".lora_A.default.weight", ".lora_B.default.weight")


def _batch(tokenizer, n: int = 4):
    ids = torch.randint(3, len(tokenizer), (n, 12))
    return ids, torch.ones_like(ids), ids.clone()


def test_adapters_start_as_the_base_model_and_only_they_train(cache_dir, tokenizer):
    from peft.tuners.lora import Linear as PeftLoraLinear

    lm = load_causal_lm("embedded", cache_dir=cache_dir)
    ids, mask, labels = _batch(tokenizer)
    reference = SortedLM(lm).exit_logits(ids, mask, [2, 8])
    net = SortedLM(lm)  # built before the adapters: PEFT adapts the layers in place, under the sorted view
    add_lora_(lm, LoraConfig(rank=4, targets=["q_proj", "down_proj"]))
    adapted = [name for name, module in net.named_modules() if isinstance(module, PeftLoraLinear)]
    assert len(adapted) == 2 * lm.config.num_hidden_layers
    assert all(name.startswith("lm.model.layers.") for name in adapted)
    for e, logits in net.exit_logits(ids, mask, [2, 8]).items():  # B = 0: the update is zero at the start
        torch.testing.assert_close(logits, reference[e])
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 * len(adapted) and all(n.endswith(ADAPTER) for n in trainable)
    loss, _ = net.exit_losses(ids, mask, labels, [2, 8])
    loss.backward()
    # every adapter below the deepest exit gets gradient; B's gradient is non-zero from the first step
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in net.named_parameters() if "lora_B" in n)
    assert net.head(8).weight.grad is None and lm.get_input_embeddings().weight.grad is None


def test_adapters_over_a_bfloat16_base_stay_float32(cache_dir):
    lm = load_causal_lm("embedded", "bfloat16", cache_dir=cache_dir)
    add_lora_(lm, LoraConfig(rank=2, targets=["v_proj"]))
    dtypes = {n: p.dtype for n, p in lm.named_parameters() if "lora_" in n or n.endswith("v_proj.base_layer.weight")}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if "base_layer" in n} == {torch.bfloat16}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, cache_dir) -> Path:
    root = tmp_path_factory.mktemp("lora")
    data = root / "rows.json"
    data.write_text(json.dumps(make_rows(48)))
    overrides = [f"data.path={data}", "data.val_size=8", "data.batch_size=8", "eval.num_generate=0", "logger=csv"]
    succeeded(run_cli(root, "run", *overrides, *LORA, "trainer.max_steps=4", "optimizer.lr=1e-2"))
    return root / "run"


def test_lora_checkpoint_holds_adapters_and_loads_merged(lora_run, cache_dir, tokenizer):
    from peft.tuners.lora import LoraLayer

    checkpoint = run_checkpoint(lora_run)
    keys = set(checkpoint["state_dict"])
    assert len(keys) == 2 * 7 * 8 and all(k.startswith("net.lm.model.layers.") and k.endswith(ADAPTER) for k in keys)
    assert checkpoint["sortednet"]["lora"]["rank"] == 4 and checkpoint["sortednet"]["quantization"] is None
    trained_B = [v for k, v in checkpoint["state_dict"].items() if ".lora_B." in k]
    assert any(v.abs().sum() > 0 for v in trained_B)  # the adapters moved

    # the same adapters on the base model, unmerged, against the loader's merged model
    module = sorted_module(ModelConfig(lora=LoraConfig(rank=4, alpha=8)), cache_dir=cache_dir)
    module.load_state_dict(checkpoint["state_dict"], strict=False)
    net, _, meta = load_sorted(str(lora_run / "checkpoints" / "last.ckpt"), cache_dir)
    assert meta.lora["rank"] == 4 and not any(isinstance(m, LoraLayer) for m in net.modules())
    ids, mask, _ = _batch(tokenizer)
    expected = module.net.eval().exit_logits(ids, mask, [2, 8])
    for e, logits in net.exit_logits(ids, mask, [2, 8]).items():
        torch.testing.assert_close(logits, expected[e], rtol=1e-4, atol=1e-4)


def _logits(lm, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return lm(input_ids=ids, attention_mask=mask).logits


def test_adapter_export_is_a_peft_directory_that_peft_alone_loads(
    lora_run, tmp_path, cache_dir, embedded_root, tokenizer, capsys
):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    ckpt = lora_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "adapter"
    assert export.main([f"ckpt={ckpt}", "adapter=true", f"out={out}"]) == 0, capsys.readouterr().err
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "adapter_config.json").read_text())
    base = embedded_root / "model"
    assert config["base_model_name_or_path"] == str(base) and config["peft_type"] == "LORA"
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (4, 8, sorted(LoraConfig().targets))
    assert len(load_file(out / "adapter_model.safetensors")) == len(run_checkpoint(lora_run)["state_dict"])

    # no sortednet code on this side: transformers + PEFT, unmerged adapters
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"]), out)
    net, _, _ = load_sorted(str(ckpt), cache_dir)
    ids, mask, _ = _batch(tokenizer)
    expected = net.exit_logits(ids, mask, [8])[8]
    torch.testing.assert_close(_logits(peft_model.eval(), ids, mask), expected, rtol=0, atol=1e-5)
    base_logits = _logits(AutoModelForCausalLM.from_pretrained(base), ids, mask)
    assert (base_logits - expected).abs().max() > 1e-3  # the adapters matter at this tolerance


def test_export_at_exit_k_of_a_lora_checkpoint_merges_the_adapters(lora_run, tmp_path, cache_dir, tokenizer, capsys):
    from transformers import AutoModelForCausalLM

    ckpt = lora_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "exit4"
    assert export.main([f"ckpt={ckpt}", "exit=4", f"out={out}"]) == 0, capsys.readouterr().err
    sub = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in sub.named_parameters())
    net, _, _ = load_sorted(str(ckpt), cache_dir)
    ids, mask, _ = _batch(tokenizer)
    torch.testing.assert_close(_logits(sub, ids, mask), net.exit_logits(ids, mask, [4])[4], rtol=1e-5, atol=1e-5)


def test_adapter_export_refuses_what_it_cannot_write(lora_run, tmp_path, capsys):

    ckpt = lora_run / "checkpoints" / "last.ckpt"
    full = run_checkpoint(lora_run)
    full_ckpt = save_checkpoint(tmp_path / "full.ckpt", full["state_dict"], {**full["sortednet"], "lora": None})
    cases = [
        ([f"ckpt={ckpt}", "adapter=true", "exit=4"], "drop exit="),
        ([f"ckpt={ckpt}", "adapter=true", "dtype=bfloat16"], "drop dtype="),
        ([f"ckpt={lora_run / 'checkpoints'}", "adapter=true"], "is not a file"),
        ([f"ckpt={full_ckpt}", "adapter=true"], "has no adapters"),
    ]
    for argv, message in cases:
        assert export.main([*argv, f"out={tmp_path / 'never'}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_lora_run_resumes_from_its_adapter_checkpoint(lora_run, tmp_path, cache_dir):
    ckpt = lora_run / "checkpoints" / "last.ckpt"
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(make_rows(48)))
    overrides = [f"data.path={data}", "data.val_size=8", "data.batch_size=8", "eval.num_generate=0", "logger=csv"]
    succeeded(
        run_cli(
            tmp_path, "resumed", *overrides, *LORA, "trainer.max_steps=6", "trainer.max_epochs=5", f"ckpt_path={ckpt}"
        )
    )
    assert run_checkpoint(tmp_path / "resumed")["global_step"] == 6


def test_bad_adapter_settings_are_one_line_errors(tmp_path, cache_dir, capsys, monkeypatch):
    cases = [
        (["model.quantization=nf4"], "add model.lora.rank=16"),
        (["model.quantization=nf4", *LORA], "no CUDA device is visible"),
        (["model.quantization=int3", *LORA], "unknown model.quantization"),
        ([*LORA, "strategy=fsdp", "trainer.devices=2"], "FSDP2 sharding of adapters is not supported"),
        ([*LORA, "model.lora.targets=[no_such]"], "matched no linear layer"),
    ]
    monkeypatch.chdir(tmp_path)
    for overrides, message in cases:
        code, err = train_in_process([f"hydra.run.dir={tmp_path / 'bad'}", "logger=csv", *overrides], capsys)
        assert code != 0, overrides
        assert message in err and "Traceback" not in err, (overrides, err[-800:])
    with pytest.raises(SortedNetError, match="drop model.lora.rank"):
        build_net(ModelConfig(lora=LoraConfig(rank=4)), ObjectiveConfig(name="ict", init_from="x.ckpt"), "all")
