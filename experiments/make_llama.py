"""Random-weight LLaMA checkpoints (and long synthetic instruction data) for benchmarks and scaled recipes.

    python experiments/make_llama.py model OUT --hidden 2048 --layers 24 --heads 16 --intermediate 5504 --vocab 32000
    python experiments/make_llama.py model OUT --hidden 512 --layers 8 --heads 8 --kv-heads 4 --intermediate 1408 \
        --vocab embedded            # the embedded tokenizer's vocabulary, tokenizer files copied into OUT
    python experiments/make_llama.py data OUT.jsonl --rows 512 --words 900

The model directory loads with ``AutoModelForCausalLM.from_pretrained`` (safetensors, bf16 weights unless
--dtype says otherwise). The data file is Alpaca-format rows whose responses are ``--words`` random words
long, so every row fills a long context (for throughput, not for learning anything).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from sortednet.hub import load_tokenizer, resolve


def make_model(args) -> None:
    tokenizer_dir = None
    if args.vocab == "embedded":
        tokenizer_dir = resolve("embedded", "tokenizer")
        vocab = len(load_tokenizer("embedded"))
    else:
        vocab = int(args.vocab)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads or args.heads,
        max_position_embeddings=args.context,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    model.save_pretrained(args.out)
    if tokenizer_dir:
        shutil.copytree(tokenizer_dir, args.out, dirs_exist_ok=True)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.out}: {params / 1e6:.1f}M parameters, {args.layers} layers, width {args.hidden}, vocab {vocab}")


def make_data(args) -> None:
    rng = random.Random(args.seed)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "seven", "north", "green", "quiet"]
    with open(args.out, "w") as f:
        for i in range(args.rows):
            response = " ".join(rng.choice(words) for _ in range(args.words))
            f.write(json.dumps({"instruction": f"Write passage {i}.", "input": "", "output": response}) + "\n")
    print(f"{args.out}: {args.rows} rows of {args.words} words")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    model = sub.add_parser("model")
    model.add_argument("out")
    model.add_argument("--hidden", type=int, required=True)
    model.add_argument("--layers", type=int, required=True)
    model.add_argument("--heads", type=int, required=True)
    model.add_argument("--kv-heads", type=int, default=None)
    model.add_argument("--intermediate", type=int, required=True)
    model.add_argument("--vocab", default="32000", help="a size, or 'embedded' for the bundled tokenizer's")
    model.add_argument("--context", type=int, default=4096)
    model.add_argument("--dtype", default="bfloat16")
    model.add_argument("--seed", type=int, default=0)
    data = sub.add_parser("data")
    data.add_argument("out")
    data.add_argument("--rows", type=int, default=512)
    data.add_argument("--words", type=int, default=900)
    data.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    (make_model if args.what == "model" else make_data)(args)


if __name__ == "__main__":
    main()
