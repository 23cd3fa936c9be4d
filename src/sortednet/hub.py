"""Loading models and tokenizers from a hub id or a local directory, with one-line errors.

The name ``embedded`` stands for the tiny model and tokenizer that :mod:`sortednet.data.embedded`
writes under the cache directory; they are then loaded like any other local checkpoint.
"""

from __future__ import annotations

import functools
import os
import socket
import urllib.parse
from pathlib import Path

import torch

from sortednet.errors import SortedNetError

EMBEDDED = "embedded"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_cache_dir() -> Path:
    return Path(os.environ.get("SORTEDNET_CACHE", Path.home() / ".cache" / "sortednet"))


def resolve(name_or_path: str, part: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The local path behind ``embedded`` (``part`` is ``model``, ``tokenizer`` or ``data.json``), else as given."""
    if name_or_path != EMBEDDED:
        return name_or_path
    from sortednet.data.embedded import materialise

    return str(materialise(cache_dir or default_cache_dir()) / part)


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (checked once per process).

    Without this, ``from_pretrained`` on a machine with no route to the hub retries for about a minute
    before failing; with it, such machines go straight to the local cache (``local_files_only``).
    """
    from huggingface_hub import constants

    host = urllib.parse.urlparse(constants.ENDPOINT).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _local_only(path: str) -> bool:
    return Path(path).expanduser().exists() or not hub_reachable()


def _looks_local(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else is meant as a path.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).exists()


def _not_found(name: str, what: str, error: Exception) -> SortedNetError:
    if _looks_local(name):
        return SortedNetError(f"{what} path {name!r} does not exist or is not a Hugging Face {what} directory")
    where = "the hub is unreachable" if not hub_reachable() else f"the hub refused it ({type(error).__name__})"
    return SortedNetError(
        f"cannot load {what} {name!r}: it is not in the local Hugging Face cache and {where}; download it "
        f"where the hub is reachable and pass the local directory: model.name_or_path=/path/to/{name.split('/')[-1]}"
    )


def load_tokenizer(name_or_path: str, cache_dir=None):
    from transformers import AutoTokenizer

    path = resolve(name_or_path, "tokenizer", cache_dir)
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=_local_only(path))
    except (OSError, ValueError) as error:
        raise _not_found(path, "tokenizer", error) from error


def load_causal_lm(name_or_path: str, dtype: str = "float32", cache_dir=None, quantization: str | None = None):
    """A causal LM from a hub id or a local directory (``from_pretrained``, weights included).

    ``quantization="nf4"`` loads the decoder's linears in 4 bits on this process's CUDA device (QLoRA)."""
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise SortedNetError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    path = resolve(name_or_path, "model", cache_dir)
    extra = {}
    if quantization is not None:
        from sortednet.lora import check_quantization, nf4_config

        check_quantization(quantization, 1, torch.cuda.is_available())
        compute = DTYPES[dtype] if DTYPES[dtype] != torch.float32 else torch.bfloat16
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        extra = dict(quantization_config=nf4_config(compute), device_map={"": device})
    try:
        return AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[dtype], local_files_only=_local_only(path), **extra
        )
    except (OSError, ValueError) as error:
        raise _not_found(path, "model", error) from error


def load_config(name_or_path: str, cache_dir=None):
    """The Hugging Face config of a hub id or local directory, without its weights."""
    from transformers import AutoConfig

    path = resolve(name_or_path, "model", cache_dir)
    try:
        return AutoConfig.from_pretrained(path, local_files_only=_local_only(path))
    except (OSError, ValueError) as error:
        raise _not_found(path, "model", error) from error


def causal_lm_from_config(architecture, dtype: str = "float32", device: str | torch.device = "meta"):
    """Build a model from a config (a dict or a Hugging Face config) without weights (``meta`` by default):
    for plans, config tests and FSDP, which shards the empty model before loading its weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if dtype not in DTYPES:
        raise SortedNetError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    config = AutoConfig.for_model(**architecture) if isinstance(architecture, dict) else architecture
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
