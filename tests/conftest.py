"""Shared fixtures: tiny models saved with save_pretrained and loaded back, the embedded assets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import absl.logging
import pytest
import torch
import tqdm

from sortednet.data.embedded import materialise

# tqdm's monitor thread refreshes slow progress bars (model loading, dataset saving) on its own, possibly after
# the captured stderr a bar was made with is closed.
tqdm.tqdm.monitor_interval = 0
# rouge-score imports absl, whose log handler keeps the stream that stderr was at import (pytest's capture) and
# closes it when logging is reconfigured — as Hydra does in the in-process train runs of test_bad_inputs — which
# killed the whole pytest process. The real stderr is never closed by that handler.
absl.logging.get_absl_handler().python_handler.setStream(sys.__stderr__)

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


# ChatML, as SmolLM2 and Qwen write it, plus a BOS the template writes itself (as LLaMA-2's template does): the
# chat tests cover a tokenizer that adds that BOS again and one that does not.
CHATML = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_tokenizer(adds_bos: bool):
    """A small byte-level BPE tokenizer with ChatML's special tokens and :data:`CHATML` as its chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from sortednet.data.embedded import make_rows

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(
        [f"user\n{r['instruction']}\n\n{r['input']} assistant\n{r['output']}" for r in make_rows(500)], trainer
    )
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", 1)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>", unk_token="<unk>", chat_template=CHATML
    )


def run_module(module: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m module args`` in its own process group (HOME = cwd, no W&B settings), killed whole on timeout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["HOME"] = str(cwd)
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def rows_of_very_different_lengths(n: int) -> list[dict]:
    """Alpaca rows whose responses run from 1 to ~40 words: micro-batches of very different token counts, so a
    mean of micro-batch means would weight tokens very unevenly."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    return [
        {
            "instruction": f"Say item {i}.",
            "input": "",
            "output": " ".join(words[j % 10] for j in range(1 + 13 * (i % 4))),
        }
        for i in range(n)
    ]
