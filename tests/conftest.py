"""Shared fixtures: tiny models saved with save_pretrained and loaded back, the embedded assets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sortednet.data.embedded import materialise

TINY = dict(
    vocab_size=101,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One SORTEDNET_CACHE for the session, so the embedded assets are written once."""
    path = tmp_path_factory.mktemp("sortednet-cache")
    os.environ["SORTEDNET_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def embedded_root(cache_dir) -> Path:
    return materialise(cache_dir)


@pytest.fixture(scope="session")
def tokenizer(embedded_root):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_root / "tokenizer")


def save_tiny(model_type: str, path: Path, **overrides) -> Path:
    """A tiny random model of ``model_type`` written with save_pretrained, as a user's checkpoint would be."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **{**TINY, **overrides})).save_pretrained(path)
    return path


@pytest.fixture(scope="session", params=["llama", "mistral", "qwen2"])
def tiny_model_dir(request, tmp_path_factory) -> Path:
    return save_tiny(request.param, tmp_path_factory.mktemp(request.param))
