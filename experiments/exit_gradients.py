"""Where SoFT's gradient goes: per exit, the loss and the gradient it sends to the parameters every exit shares.

SoFT's loss is the uniform mean of the exits' losses, so the gradient on a shared parameter (the tied
embedding/LM head, the final norm, the deepest layers) is the mean of the exits' gradients. This prints, for a
checkpoint and a batch of training rows (never the held-out ones), each exit's loss, the norm of its gradient
on each shared group, and the cosine between that gradient and the last exit's: how much of a SoFT step serves
the last exit, and whether the shallow exits pull the shared head against it.

    python experiments/exit_gradients.py CKPT_OR_HF_DIR DATA.json [--rows 16] [--exits 9 12 ... 30]
"""

from __future__ import annotations

import argparse
import sys

import torch


def load(path: str):
    """A sortednet checkpoint (through the inference loader) or a Hugging Face directory (the base model)."""
    from pathlib import Path

    from sortednet.model import SortedLM

    if Path(path, "config.json").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        return SortedLM(lm), AutoTokenizer.from_pretrained(path)
    from sortednet.inference.load import load_sorted

    net, tokenizer, _ = load_sorted(path)
    return net, tokenizer


def groups(net) -> dict[str, list[torch.nn.Parameter]]:
    """The shared parameters, grouped: the (tied) head, the final norm, the last three decoder layers."""
    last = list(net.decoder.layers)[-3:]
    return {
        "head": [net.lm_head.weight],
        "norm": list(net.norm.parameters()),
        f"layers {net.num_layers - 2}-{net.num_layers}": [p for layer in last for p in layer.parameters()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--prompt-style", default="chat")
    parser.add_argument("--exits", type=int, nargs="+", default=[9, 12, 15, 18, 21, 24, 27, 30])
    args = parser.parse_args()

    from sortednet.data.alpaca import Collator, pad_id, tokenize_rows
    from sortednet.data.rows import check_rows, read_rows

    torch.manual_seed(0)
    net, tokenizer = load(args.model)
    net.train()
    for p in net.parameters():
        p.requires_grad_(True)
    rows = check_rows(read_rows(args.data), args.data)[: args.rows]
    columns = tokenize_rows(rows, tokenizer, args.prompt_style, args.max_length, mask_prompt=True)
    examples = zip(columns["input_ids"], columns["labels"], strict=True)
    batch = Collator(pad_id(tokenizer))([{"input_ids": ids, "labels": labels} for ids, labels in examples])
    shared = groups(net)
    grads: dict[int, dict[str, torch.Tensor]] = {}
    losses: dict[int, float] = {}
    for e in args.exits:
        net.zero_grad(set_to_none=True)
        loss, _ = net.exit_losses(batch["input_ids"], batch["attention_mask"], batch["labels"], [e])
        loss.backward()
        losses[e] = float(loss.detach())
        print(f"exit {e}: loss {losses[e]:.2f}", file=sys.stderr, flush=True)
        grads[e] = {
            name: torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
            for name, params in shared.items()
        }
    last = args.exits[-1]
    names = list(shared)
    print(f"# {args.model}: {len(columns['input_ids'])} rows of {args.data}, one exit's token-mean CE at a time")
    print("| exit | loss | " + " | ".join(f"‖g‖ {n} | cos(g, g_{last}) {n}" for n in names) + " |")
    print("|---|---|" + "---|---|" * len(names))
    for e in args.exits:
        cells = []
        for n in names:
            g, ref = grads[e][n], grads[last][n]
            cos = float(torch.nn.functional.cosine_similarity(g, ref, dim=0)) if g.norm() > 0 else float("nan")
            cells += [f"{g.norm():.3g}", f"{cos:+.2f}"]
        print(f"| {e} | {losses[e]:.2f} | " + " | ".join(cells) + " |")
    for n in names:  # the SoFT step's direction on this group: the mean of the exits' gradients
        mean = torch.stack([grads[e][n] for e in args.exits]).mean(0)
        cos = float(torch.nn.functional.cosine_similarity(mean, grads[last][n], dim=0))
        share = float(grads[last][n].norm() / sum(grads[e][n].norm() for e in args.exits))
        print(f"{n}: cos(SoFT step, exit {last} alone) = {cos:+.2f}; exit {last}'s share of the norms {share:.2f}")


if __name__ == "__main__":
    main()
