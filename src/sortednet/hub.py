"""Loading models and tokenizers from a hub id, a local directory or a GGUF file, with one-line errors.

The name ``embedded`` stands for the tiny model and tokenizer that :mod:`sortednet.embedded`
writes under the cache directory; they are then loaded like any other local checkpoint.

A path ending in ``.gguf`` (llama.cpp's format) is read by transformers' own GGUF loader: config, tokenizer
and weights come from the one file, the weights dequantized to the requested dtype. The loaded model is a
plain Hugging Face model afterwards (no quantization config left), so it saves and exports like any other.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import urllib.parse
from pathlib import Path

import torch
from huggingface_hub import constants

from sortednet.embedded import materialise
from sortednet.errors import SortedNetError

EMBEDDED = "embedded"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str | torch.dtype, device: torch.device | None = None) -> torch.dtype:
    """A dtype by name: float32 | bfloat16 | float16; with the ``device`` the model will run on, also ``auto``
    (bfloat16 on CUDA, float32 elsewhere). A ``torch.dtype`` is returned as it is."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto" and device is not None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise SortedNetError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}")
    return DTYPES[name]


def default_cache_dir() -> Path:
    return Path(os.environ.get("SORTEDNET_CACHE", Path.home() / ".cache" / "sortednet"))


def resolve(name_or_path: str, part: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The local path behind ``embedded`` (``part`` is ``model``, ``tokenizer`` or ``data.json``), else as given."""
    if name_or_path != EMBEDDED:
        return name_or_path
    return str(materialise(cache_dir or default_cache_dir()) / part)


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (checked once per process).

    Without this, ``from_pretrained`` on a machine with no route to the hub retries for about a minute
    before failing; with it, such machines go straight to the local cache (``local_files_only``).
    """
    host = urllib.parse.urlparse(constants.ENDPOINT).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


GGUF_MAGIC = b"GGUF"


def gguf_parts(path: str) -> tuple[str, str] | None:
    """``(directory, file name)`` of a ``.gguf`` path (checked: it exists and is a GGUF file), else None."""
    if not path.endswith(".gguf"):
        return None
    file = Path(path).expanduser()
    if not file.is_file():
        raise SortedNetError(f"GGUF file {path!r} not found; pass model.name_or_path=/path/to/model.gguf")
    try:
        with file.open("rb") as handle:
            magic = handle.read(4)
    except OSError as error:
        raise SortedNetError(f"cannot read GGUF file {path!r} ({error.strerror}); check its permissions") from error
    if magic != GGUF_MAGIC:
        raise SortedNetError(f"{path!r} is not a GGUF file (no GGUF header); pass a llama.cpp .gguf model file")
    return str(file.parent), file.name


def _from_pretrained(loader, path: str, what: str, **kwargs):
    """``loader.from_pretrained`` for a directory, hub id or ``.gguf`` file; one-line errors."""
    gguf = gguf_parts(path)
    if gguf is None:
        try:
            return loader.from_pretrained(path, local_files_only=_local_only(path), **kwargs)
        except (OSError, ValueError) as error:
            raise _not_found(path, what, error) from error
    directory, name = gguf
    try:
        return loader.from_pretrained(directory, gguf_file=name, local_files_only=True, **kwargs)
    except ImportError as error:  # transformers needs the gguf package to read the file
        raise SortedNetError(f"reading {path!r} needs the gguf package; pip install gguf ({error})") from error
    except Exception as error:  # the GGUF reader raises many types for truncated or unsupported files
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SortedNetError(
            f"cannot load the {what} in GGUF file {path!r} ({reason}); pass a complete .gguf of a LLaMA-family "
            f"model (llama, mistral, qwen2, ...) or its Hugging Face directory"
        ) from error


def _local_only(path: str) -> bool:
    return Path(path).expanduser().exists() or not hub_reachable()


def looks_local(name: str) -> bool:
    """Whether ``name`` means a local path rather than a hub id (hub ids are ``name`` or ``org/name``): it
    exists, starts with ``.``, ``/`` or ``~``, has more than one ``/``, or ends like a file we read."""
    return (
        Path(name).expanduser().exists()
        or name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or name.endswith((".json", ".jsonl", ".gguf"))
    )


def _not_found(name: str, what: str, error: Exception) -> SortedNetError:
    if looks_local(name):
        config = Path(name).expanduser() / "config.json"
        if config.is_file():  # the directory is right; its config is what is broken
            try:
                json.loads(config.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as broken:
                return SortedNetError(f"{str(config)!r} is not valid JSON ({broken}); fix or replace that file")
        return SortedNetError(f"{what} path {name!r} does not exist or is not a Hugging Face {what} directory")
    where = "the hub is unreachable" if not hub_reachable() else f"the hub refused it ({type(error).__name__})"
    return SortedNetError(
        f"cannot load {what} {name!r}: it is not in the local Hugging Face cache and {where}; download it "
        f"where the hub is reachable and pass the local directory: model.name_or_path=/path/to/{name.split('/')[-1]}"
    )


def load_tokenizer(name_or_path: str, cache_dir=None):
    from transformers import AutoTokenizer  # lazy: transformers is slow to import

    return _from_pretrained(AutoTokenizer, resolve(name_or_path, "tokenizer", cache_dir), "tokenizer")


def load_causal_lm(
    name_or_path: str, dtype: str | torch.dtype = "float32", cache_dir=None, quantization: str | None = None
):
    """A causal LM from a hub id or a local directory (``from_pretrained``, weights included).

    ``quantization="nf4"`` loads the decoder's linears in 4 bits on this process's CUDA device (QLoRA)."""
    from transformers import AutoModelForCausalLM  # lazy: slow to import

    weights = resolve_dtype(dtype)
    path = resolve(name_or_path, "model", cache_dir)
    extra = {}
    if quantization is not None:
        check_quantization(quantization, 1, torch.cuda.is_available())
        compute = weights if weights != torch.float32 else torch.bfloat16
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        extra = dict(quantization_config=nf4_config(compute), device_map={"": device})
    model = _from_pretrained(AutoModelForCausalLM, path, "model", dtype=weights, **extra)
    if gguf_parts(path) is not None:
        _forget_gguf_quantization(model)
    return model


def _forget_gguf_quantization(model) -> None:
    """A GGUF-loaded model holds dequantized weights but keeps a GGUF quantizer and ``quantization_config``,
    which would make ``save_pretrained`` write a config that sends a re-load looking for the file: drop them."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    elif hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load_config(name_or_path: str, cache_dir=None):
    """The Hugging Face config of a hub id or local directory, without its weights."""
    from transformers import AutoConfig  # lazy: slow to import

    return _from_pretrained(AutoConfig, resolve(name_or_path, "model", cache_dir), "model")


def causal_lm_from_config(architecture, dtype: str = "float32", device: str | torch.device = "meta"):
    """Build a model from a config (a dict or a Hugging Face config) without weights (``meta`` by default):
    for plans, config tests and FSDP, which shards the empty model before loading its weights."""
    from transformers import AutoConfig, AutoModelForCausalLM  # lazy: slow to import

    weights = resolve_dtype(dtype)
    config = AutoConfig.for_model(**architecture) if isinstance(architecture, dict) else architecture
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=weights)


# ---------------------------------------------------------------- 4-bit base weights (QLoRA)

QUANTIZATIONS = ("nf4",)


def nf4_config(compute_dtype: torch.dtype = torch.bfloat16):
    """The QLoRA paper's quantization: 4-bit NormalFloat with double quantization, bf16 compute."""
    try:  # lazy: bitsandbytes is an optional extra (sortednet[bnb]), and transformers is slow to import
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise SortedNetError(
            "model.quantization=nf4 needs bitsandbytes, which is not installed; pip install 'sortednet[bnb]'"
        ) from error
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def check_quantization(quantization: str | None, lora_rank: int, cuda: bool) -> None:
    """One-line errors for a quantization setting that cannot train here."""
    if quantization is None:
        return
    if quantization not in QUANTIZATIONS:
        raise SortedNetError(f"unknown model.quantization={quantization!r}; use nf4 (4-bit QLoRA) or null")
    if lora_rank < 1:
        raise SortedNetError(
            "model.quantization=nf4 freezes the base weights in 4 bits, so only adapters can train; "
            "add model.lora.rank=16 (QLoRA)"
        )
    if not cuda:
        raise SortedNetError(
            "model.quantization=nf4 loads the weights with bitsandbytes' 4-bit CUDA kernels and no CUDA device "
            "is visible; run on a GPU or drop model.quantization"
        )
