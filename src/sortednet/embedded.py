"""The embedded default: an instruction data set, a tokenizer and a tiny LLaMA, all made here.

Everything is written to disk in the formats a real run reads (an Alpaca-format JSON file, a Hugging
Face tokenizer directory, a ``save_pretrained`` model directory), so the default run goes through the
same loading code as a 13B run. Generation is deterministic: the same version always writes the same
bytes, and a finished directory is never rewritten.

The task families are graded in difficulty, so that shallow and deep exits differ measurably:
``recall`` (a memorised lookup), ``copy`` (attend and copy), ``count``, ``reverse`` and ``add``
(a 200-fact addition table).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from sortednet.io import write_dir_atomically
from sortednet.prompts import ALPACA

VERSION = "v2"
WORDS = (
    "apple river stone cloud tiger lemon piano rocket garden silver candle forest "
    "window rabbit orange planet dragon pencil castle mirror violin copper meadow falcon"
).split()
COLORS = "red blue green yellow black white purple brown".split()
N_EXAMPLES = 6000

MODEL_CONFIG = dict(
    vocab_size=None,  # filled with the tokenizer's size
    hidden_size=128,
    intermediate_size=352,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)


def _recall(rng: random.Random) -> dict:
    word = rng.choice(WORDS)
    # A fixed word -> colour table the model can only learn by memorising it.
    color = COLORS[sum(map(ord, word)) % len(COLORS)]
    return {"instruction": f"What color is the {word}?", "input": "", "output": f"The {word} is {color}."}


def _copy(rng: random.Random) -> dict:
    words = rng.sample(WORDS[:12], rng.randint(2, 3))
    return {"instruction": "Repeat the words exactly.", "input": " ".join(words), "output": " ".join(words)}


def _count(rng: random.Random) -> dict:
    words = [rng.choice(WORDS[:6]) for _ in range(rng.randint(1, 7))]
    return {
        "instruction": "How many words are in the input?",
        "input": " ".join(words),
        "output": str(len(words)),
    }


def _reverse(rng: random.Random) -> dict:
    words = rng.sample(WORDS[:12], rng.randint(2, 3))
    return {
        "instruction": "Write the words in reverse order.",
        "input": " ".join(words),
        "output": " ".join(reversed(words)),
    }


def _add(rng: random.Random) -> dict:
    a, b = rng.randint(0, 9), rng.randint(0, 19)
    return {"instruction": f"What is {a} plus {b}?", "input": "", "output": str(a + b)}


TASKS = {"recall": _recall, "copy": _copy, "count": _count, "reverse": _reverse, "add": _add}


def make_rows(n: int = N_EXAMPLES, seed: int = 0) -> list[dict]:
    """``n`` Alpaca-format rows, the task families interleaved, fully determined by ``seed``."""
    rng = random.Random(seed)
    families = list(TASKS)
    return [TASKS[families[i % len(families)]](rng) for i in range(n)]


def _build_tokenizer(rows: list[dict]):
    """A byte-level BPE tokenizer trained on the data set's prompts and answers, LLaMA-style specials."""
    from transformers import PreTrainedTokenizerFast  # lazy: transformers is slow to import (seconds)

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [ALPACA.format(r["instruction"], r["input"]) + r["output"] for r in rows]
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    # Like LLaMA's tokenizer: BOS in front of every sequence, no EOS appended, no pad token.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def materialise(root: str | os.PathLike) -> Path:
    """Write (once) the embedded data, tokenizer and model under ``root``; return their directory.

    Layout: ``data.json`` (Alpaca format), ``tokenizer/`` and ``model/`` (Hugging Face format).
    """
    target = Path(root).expanduser() / f"embedded-{VERSION}"
    if (target / "model" / "config.json").exists():
        return target

    def write(tmp: Path) -> None:
        from transformers import LlamaConfig, LlamaForCausalLM  # lazy: seconds to import, for the first run only

        rows = make_rows()
        (tmp / "data.json").write_text(json.dumps(rows, indent=1))
        tokenizer = _build_tokenizer(rows)
        tokenizer.save_pretrained(tmp / "tokenizer")
        config = LlamaConfig(
            **{**MODEL_CONFIG, "vocab_size": len(tokenizer)},
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(tmp / "model")

    write_dir_atomically(target, write, if_exists="keep")
    return target
