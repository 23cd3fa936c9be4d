"""The pretrained model's own exits, before any fine-tuning: the reference row of the SmolLM2 table.

Per-exit loss on held-out rows, tokenized, masked and averaged exactly as `sortednet.evaluate suite=loss` does
for a checkpoint (same rows, same prompt style, same max_length), so the rows compare one to one.

    python experiments/base_exits.py HF_DIR HELDOUT.json [--prompt-style chat] [--max-length 256]
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a Hugging Face model directory (the base the runs fine-tune)")
    parser.add_argument("data", help="held-out rows, Alpaca JSON")
    parser.add_argument("--prompt-style", default="chat")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--exits", type=int, nargs="+", default=[9, 12, 15, 18, 21, 24, 27, 30])
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sortednet.eval.loss import loss_suite
    from sortednet.model import SortedLM

    net = SortedLM(AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    rows = loss_suite(net, tokenizer, {"prompt_style": args.prompt_style}, args.exits, args.data, args.batch_size,
                      max_length=args.max_length)  # fmt: skip
    print(f"per-exit loss of the pretrained model {args.model} on {args.data} (no fine-tuning)")
    print(f"{'exit':>5} {'loss':>7} {'ppl':>10} {'tokens':>7} {'rows':>5}")
    for row in rows:
        print(f"{row['exit']:>5} {row['loss']:>7.3f} {row['ppl']:>10.4g} {row['tokens']:>7} {row['rows']:>5}")


if __name__ == "__main__":
    main()
