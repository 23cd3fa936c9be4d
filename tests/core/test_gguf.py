"""`model.name_or_path=PATH.gguf`: a tiny LLaMA written as llama.cpp writes GGUF files, loaded through
sortednet.hub, trained, planned and rebuilt from its checkpoint; one-line errors for files it cannot read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CHATML, chat_tokenizer, one_line, run_module
from sortednet.embedded import make_rows
from sortednet.errors import SortedNetError
from sortednet.hub import load_causal_lm, load_config, load_tokenizer
from sortednet.inference.load import load_sorted
from sortednet.plan import PlanConfig, plan
from sortednet.training.composition import compose

HEADS, KV_HEADS = 4, 2

# llama.cpp's tensor names for the Hugging Face LLaMA decoder layer's weights (convert_hf_to_gguf.py).
LAYER_TENSORS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
CONTROL, NORMAL = 3, 1  # llama.cpp's token types


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp reorders each head's Q/K rows from Hugging Face's rotate-half layout to interleaved pairs
    (row 2i, 2i+1 = HF rows i, i + d/2), the layout its RoPE kernel expects; a GGUF reader undoes it."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def write_gguf(lm, tokenizer, path: Path, architecture: str = "llama") -> Path:
    """``lm`` (a Hugging Face LLaMA) and ``tokenizer`` (byte-level BPE) as an fp32 GGUF file, as llama.cpp's
    converter writes one: hyper-parameters under the architecture's keys, the vocabulary as ``gpt2`` BPE
    with its merges, token types and special ids, the chat template, and the tensors under llama.cpp's names."""
    import gguf

    config = lm.config
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny-llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)

    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))
    specials = set(tokenizer.all_special_ids)
    writer.add_token_types([CONTROL if i in specials else NORMAL for i in range(len(tokenizer))])
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([" ".join(merge) for merge in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)

    state = {name: tensor.detach().float().numpy() for name, tensor in lm.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    if not config.tie_word_embeddings:
        writer.add_tensor("output.weight", state["lm_head.weight"])
    for layer in range(config.num_hidden_layers):
        for hf_name, gguf_name in LAYER_TENSORS.items():
            weight = state[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name in ("attn_q", "attn_k"):
                heads = config.num_attention_heads if gguf_name == "attn_q" else config.num_key_value_heads
                weight = np.ascontiguousarray(llama_cpp_permute(weight, heads))
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_llama(vocab_size: int, tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=3,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return chat_tokenizer(adds_bos=False)  # SmolLM2-like: ChatML, no BOS added by the tokenizer


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def written(request, tokenizer, tmp_path_factory):
    """(the HF model, its GGUF file), with an own LM head (llama.cpp's ``output``) and with tied embeddings."""
    lm = tiny_llama(len(tokenizer), tied=request.param)
    return lm, write_gguf(lm, tokenizer, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def untied(tokenizer, tmp_path_factory):
    lm = tiny_llama(len(tokenizer), tied=False)
    return lm, write_gguf(lm, tokenizer, tmp_path_factory.mktemp("gguf") / "untied.gguf")


TEXT = "What color is the apple? The apple is red.\n\nriver  stone<|im_end|>"


def test_gguf_model_has_the_written_model_s_logits_and_tokenizer(written, tokenizer):
    lm, path = written
    loaded = load_causal_lm(str(path))
    assert loaded.config.tie_word_embeddings == lm.config.tie_word_embeddings
    assert (loaded.config.num_hidden_layers, loaded.config.num_key_value_heads) == (4, KV_HEADS)
    ids = torch.tensor([tokenizer(TEXT)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, lm(ids).logits, rtol=0, atol=1e-5)

    from_file = load_tokenizer(str(path))
    assert from_file(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
    assert (from_file.bos_token, from_file.eos_token) == ("<|endoftext|>", "<|im_end|>")
    assert from_file.chat_template == CHATML


def test_gguf_model_saves_as_a_plain_directory_that_reloads(written, tmp_path):
    from transformers import AutoModelForCausalLM

    lm, path = written
    load_causal_lm(str(path)).save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    ids = torch.tensor([[1, 5, 9, 30, 200]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, lm(ids).logits, rtol=0, atol=1e-5)


def test_config_and_dtype_from_gguf(untied):
    _, path = untied
    assert load_config(str(path)).hidden_size == 32
    assert load_causal_lm(str(path), dtype="bfloat16").dtype == torch.bfloat16


def test_plan_reads_the_architecture_from_the_gguf(untied):
    lm, path = untied
    result = plan(compose([f"model.name_or_path={path}", "trainer.devices=2"]), PlanConfig())
    assert result["params"] == sum(p.numel() for p in lm.parameters()) and result["devices"] == 2


# ---------------------------------------------------------------- files it cannot read


def test_a_missing_gguf_is_one_line(tmp_path):
    with pytest.raises(SortedNetError) as error:
        load_causal_lm(str(tmp_path / "absent.gguf"))
    assert "not found" in one_line(error) and "absent.gguf" in str(error.value)


def test_a_file_that_is_not_gguf_is_one_line(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text('{"model_type": "llama"}')
    for load in (load_causal_lm, load_tokenizer, load_config):
        with pytest.raises(SortedNetError) as error:
            load(str(fake))
        assert "is not a GGUF file" in one_line(error)


def test_a_truncated_gguf_is_one_line(untied, tmp_path):
    _, path = untied
    data = path.read_bytes()
    for size in (len(data) // 2, 40):  # cut inside the tensors, and inside the header
        cut = tmp_path / f"cut{size}.gguf"
        cut.write_bytes(data[:size])
        for load in (load_causal_lm, load_tokenizer):
            with pytest.raises(SortedNetError) as error:
                load(str(cut))
            message = one_line(error)
            assert f"cut{size}.gguf" in message and "complete .gguf" in message, message


def test_an_unsupported_architecture_is_one_line(tokenizer, tmp_path):
    path = write_gguf(tiny_llama(len(tokenizer), tied=True), tokenizer, tmp_path / "rwkv.gguf", architecture="rwkv6")
    with pytest.raises(SortedNetError) as error:
        load_causal_lm(str(path))
    assert "not supported" in one_line(error) and "rwkv6" in str(error.value)


# ---------------------------------------------------------------- training from a GGUF


@pytest.mark.slow
def test_training_from_a_gguf_and_rebuilding_from_its_checkpoint(untied, tmp_path, cache_dir):
    lm, path = untied
    data = tmp_path / "data.json"
    data.write_text(json.dumps(make_rows(24)))
    process = run_module(
        "sortednet.train",
        f"hydra.run.dir={tmp_path / 'run'}",
        "logger=none",
        f"model.name_or_path={path}",
        f"data.path={data}",
        "data.prompt_style=chat",
        "data.val_size=4",
        "data.batch_size=4",
        "exits=[2,4]",
        "trainer.max_steps=2",
        "eval.num_generate=0",
        cwd=tmp_path,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    checkpoint_path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    meta = checkpoint["sortednet"]
    assert meta["model"] == str(path) and meta["prompt_style"] == "chat"
    assert "quantization_config" not in meta["hf_config"]

    net, tokenizer, _ = load_sorted(str(checkpoint_path))
    assert tokenizer.chat_template == CHATML
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, checkpoint["state_dict"][f"net.{key}"], rtol=0, atol=0)
    trained = net.lm.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(trained, lm.state_dict()["model.layers.0.self_attn.q_proj.weight"])  # it trained
