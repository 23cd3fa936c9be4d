"""A Hugging Face LLaMA (sub-model K of a sorted model, cut by :meth:`sortednet.model.SortedLM.submodel`) as one GGUF
file, the format llama.cpp and the tools built on it (Ollama, LM Studio, llamafile) run.

What goes in, as llama.cpp's loader reads it:

- the ``llama`` architecture's hyper-parameters, ``block_count`` being the sub-model's layer count;
- the tokenizer: copied key for key from the GGUF file the model came from, when it came from one (a round trip
  keeps llama.cpp's own tokenizer record, pre-tokenizer name included); otherwise derived from the Hugging Face
  fast tokenizer (byte-level BPE: ``gpt2`` with its merges), with token types, special ids, whether BOS/EOS
  are added, and the chat template;
- the tensors under llama.cpp's names, Q and K rows reordered per head from Hugging Face's rotate-half layout
  to the interleaved pairs llama.cpp's RoPE expects; 1-D tensors (norms) always in float32, as llama.cpp's
  own converter keeps them;
- ``sortednet.*`` keys naming the exit, the source's layer count and the source checkpoint.

Nothing here knows about Lightning or Hydra.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch

from sortednet.errors import SortedNetError

GGUF_DTYPES = ("float32", "float16", "bfloat16", "q8_0")
ARCHITECTURE = "llama"
Q8_0_BLOCK = 32  # q8_0 quantizes each row in blocks of 32 values: every row width must be a multiple

# Hugging Face LLaMA decoder-layer weights -> llama.cpp's tensor names (blk.N.<name>.weight).
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

# Hugging Face pre-tokenizers (as tokenizer.json writes them) -> the llama.cpp pre-tokenizer that splits text
# the same way. Any other pre-tokenizer is refused: a wrong one would tokenize differently with no error.
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
_PRE_TOKENIZERS = {
    "gpt-2": _BYTE_LEVEL,
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
}


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def row_widths(config) -> dict[str, int]:
    """The row width (input features, llama.cpp's ``ne[0]``) of each kind of matrix in the file."""
    return {
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_attention_heads * head_dim": config.num_attention_heads * head_dim(config),
    }


def check_exportable(config, dtype: str) -> None:
    """One-line errors for a model llama.cpp's ``llama`` architecture would not run as Hugging Face does, or a
    ``dtype`` it cannot hold at this width; checked before any weight is written."""
    if dtype not in GGUF_DTYPES:
        raise SortedNetError(f"unknown dtype {dtype!r} for a GGUF file; use one of {', '.join(GGUF_DTYPES)}")
    model_type = getattr(config, "model_type", None)
    if model_type != ARCHITECTURE:
        raise SortedNetError(
            f"the GGUF writer supports the LLaMA architecture only, this model is {model_type!r}; "
            f"export it as a Hugging Face directory (out=DIR) and convert that with llama.cpp's convert_hf_to_gguf.py"
        )
    unsupported = []
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        unsupported.append("attention/MLP biases")
    if getattr(config, "hidden_act", "silu") != "silu":
        unsupported.append(f"hidden_act={config.hidden_act}")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        unsupported.append(f"rope_type={rope['rope_type']}")
    if getattr(config, "pretraining_tp", 1) not in (1, None):
        unsupported.append(f"pretraining_tp={config.pretraining_tp}")
    if unsupported:
        raise SortedNetError(
            f"the GGUF writer writes plain LLaMA models; this one has {', '.join(unsupported)}; "
            f"export it as a Hugging Face directory (out=DIR) instead"
        )
    if dtype == "q8_0":
        bad = {name: width for name, width in row_widths(config).items() if width % Q8_0_BLOCK}
        if bad:
            widths = ", ".join(f"{name}={width}" for name, width in bad.items())
            raise SortedNetError(
                f"dtype=q8_0 needs every row width to be a multiple of {Q8_0_BLOCK}, this model has {widths}; "
                f"use dtype=float16 or bfloat16"
            )


def llama_cpp_qk_order(weight: np.ndarray, heads: int) -> np.ndarray:
    """Q or K rows from Hugging Face's rotate-half layout (per head: first halves, then second halves of each
    rotated pair) to llama.cpp's interleaved one (rows 2i, 2i+1 of a head rotate together)."""
    rows = weight.shape[0]
    per_head = weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
    return np.ascontiguousarray(per_head.swapaxes(1, 2).reshape(weight.shape))


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).numpy()


def _add_weight(writer, name: str, weight: np.ndarray, dtype: str) -> None:
    if weight.ndim == 1 or dtype == "float32":  # norms stay float32 whatever the file type (llama.cpp does so too)
        writer.add_tensor(name, np.ascontiguousarray(weight, dtype=np.float32))
    elif dtype == "float16":
        writer.add_tensor(name, weight.astype(np.float16))
    else:
        qtype = gguf.GGMLQuantizationType.BF16 if dtype == "bfloat16" else gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(weight, qtype), raw_dtype=qtype)


_FILE_TYPES = {"float32": "ALL_F32", "float16": "MOSTLY_F16", "bfloat16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def write_gguf(
    lm, tokenizer, path: Path, dtype: str, *, name: str, tokenizer_gguf: str | None = None, sortednet: dict
) -> None:
    """Write the LLaMA ``lm`` and its ``tokenizer`` to ``path`` (a new file; the caller renames it into place).

    ``tokenizer_gguf``: the GGUF file the tokenizer came from, whose ``tokenizer.*`` keys are copied as they are.
    ``sortednet``: provenance written under ``sortednet.<key>`` (ints and strings)."""
    config = lm.config
    check_exportable(config, dtype)
    writer = gguf.GGUFWriter(str(path), ARCHITECTURE)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType[_FILE_TYPES[dtype]])
    if dtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim(config))
    writer.add_value_length(head_dim(config))
    writer.add_rope_dimension_count(head_dim(config))
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    for key, value in sortednet.items():
        if isinstance(value, int):
            writer.add_uint32(f"sortednet.{key}", value)
        elif value:
            writer.add_string(f"sortednet.{key}", str(value))
    if tokenizer_gguf is not None:
        copy_tokenizer_keys(writer, tokenizer_gguf, config.vocab_size)
    else:
        add_tokenizer(writer, tokenizer, config.vocab_size)

    state = lm.state_dict()
    _add_weight(writer, "token_embd.weight", _to_numpy(state["model.embed_tokens.weight"]), dtype)
    for layer in range(config.num_hidden_layers):
        for hf_name, gguf_name in LAYER_TENSORS.items():
            weight = _to_numpy(state[f"model.layers.{layer}.{hf_name}.weight"])
            if gguf_name == "attn_q":
                weight = llama_cpp_qk_order(weight, config.num_attention_heads)
            elif gguf_name == "attn_k":
                weight = llama_cpp_qk_order(weight, config.num_key_value_heads)
            _add_weight(writer, f"blk.{layer}.{gguf_name}.weight", weight, dtype)
    _add_weight(writer, "output_norm.weight", _to_numpy(state["model.norm.weight"]), dtype)
    if not config.tie_word_embeddings:  # tied: llama.cpp reuses token_embd as the head when output is absent
        _add_weight(writer, "output.weight", _to_numpy(state["lm_head.weight"]), dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def copy_tokenizer_keys(writer, source: str, vocab_size: int) -> None:
    """Every ``tokenizer.*`` key of the GGUF file ``source``, with its value type, into ``writer``."""
    reader = gguf.GGUFReader(source)
    fields = {name: field for name, field in reader.fields.items() if name.startswith("tokenizer.")}
    tokens = fields.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens.data) != vocab_size:
        count = "no" if tokens is None else len(tokens.data)
        raise SortedNetError(f"the tokenizer of {source!r} has {count} tokens, the model {vocab_size} embedding rows")
    for name, field in fields.items():
        main_type = field.types[0]
        sub_type = field.types[-1] if main_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), main_type, sub_type=sub_type)


def _pre_tokenizer_name(pre_tokenizer: dict | None) -> str:
    def shape(spec):  # only the fields that decide how text is split
        if spec.get("type") == "Sequence":
            return {"type": "Sequence", "pretokenizers": [shape(p) for p in spec["pretokenizers"]]}
        keep = {"ByteLevel": ("add_prefix_space", "use_regex"), "Digits": ("individual_digits",)}
        return {"type": spec.get("type"), **{k: spec.get(k) for k in keep.get(spec.get("type"), ())}}

    found = shape(pre_tokenizer or {})
    for name, spec in _PRE_TOKENIZERS.items():
        if found == spec:
            return name
    raise SortedNetError(
        f"the tokenizer's pre-tokenizer {json.dumps(found)} has no llama.cpp equivalent known to the GGUF writer "
        f"(it knows byte-level BPE as gpt-2 and smollm); export a Hugging Face directory (out=DIR) instead"
    )


def add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """A Hugging Face fast byte-level BPE tokenizer as llama.cpp's ``gpt2`` tokenizer record."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise SortedNetError(f"the GGUF writer reads fast tokenizers; {type(tokenizer).__name__} is not one")
    spec = json.loads(backend.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = "BPE with byte fallback (SentencePiece-style)" if model.get("byte_fallback") else model.get("type")
        raise SortedNetError(
            f"the GGUF writer writes byte-level BPE tokenizers; this one is {kind}; "
            f"export a Hugging Face directory (out=DIR) and convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    pre = _pre_tokenizer_name(spec.get("pre_tokenizer"))
    if len(tokenizer) > vocab_size:
        raise SortedNetError(f"the tokenizer has {len(tokenizer)} tokens, more than the model's {vocab_size} rows")

    added = {i: token for i, token in tokenizer.added_tokens_decoder.items()}
    specials = set(tokenizer.all_special_ids) | {i for i, token in added.items() if token.special}
    names = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    tokens, types = [], []
    for i in range(vocab_size):  # rows beyond the tokenizer (padded embeddings) become unused placeholders
        token = names[i] if i < len(names) else None
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            if i in specials:
                types.append(gguf.TokenType.CONTROL)
            elif i in added:
                types.append(gguf.TokenType.USER_DEFINED)
            else:
                types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])])
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    # whether the tokenizer itself puts BOS/EOS around a text, as the Hugging Face tokenizer does
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id])
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id])
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)
