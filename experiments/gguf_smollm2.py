"""SmolLM2-135M-Instruct through `sortednet.export out=FILE.gguf` and back through llama.cpp itself.

The pretrained model (no tuning needed: this checks the file, not the exits' quality) comes in as the GGUF file
of `experiments/fetch_smollm2.py`, is wrapped as a sortednet checkpoint whose model and tokenizer are that
file, and goes out as GGUF at exit 30 (the full model) and one intermediate exit, in float32 and q8_0. For each
file: llama.cpp's next-token logits over a chat prompt against sortednet's exit logits (max abs diff), greedy
agreement (teacher-forced argmax, and the free-running continuation), file size and llama.cpp's batch-1
decoding speed.

Usage: python experiments/gguf_smollm2.py GGUF OUT [EXIT ...]   (needs the llamacpp extra)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lightning
import numpy as np
import torch

from sortednet.export import ExportConfig, export_gguf
from sortednet.hub import load_causal_lm, load_tokenizer
from sortednet.inference.llamacpp import decode_speed, greedy, logits, open_gguf
from sortednet.inference.load import load_sorted

PROMPT = [{"role": "user", "content": "What is the capital of France? Answer, then name a river there."}]
NEW_TOKENS = 32


def as_checkpoint(gguf: Path, out: Path, exits: list[int]) -> Path:
    """The GGUF model as sortednet.train's checkpoint layout, its model and tokenizer being the GGUF file."""
    lm = load_causal_lm(str(gguf))
    meta = {
        "objective": "pretrained", "exits": exits, "num_layers": lm.config.num_hidden_layers, "exit_heads": [],
        "hf_config": lm.config.to_dict(), "model": str(gguf), "tokenizer": str(gguf), "prompt_style": "chat",
    }  # fmt: skip
    path = out / "smollm2.ckpt"
    state = {f"net.lm.{k}": v for k, v in lm.state_dict().items()}
    torch.save({"pytorch-lightning_version": lightning.__version__, "state_dict": state, "sortednet": meta}, path)
    return path


def ours_greedy(net, exit_: int, ids: list[int], new_tokens: int) -> list[int]:
    ids, out = list(ids), []
    with torch.no_grad():
        for _ in range(new_tokens):
            out.append(int(net.exit_logits(torch.tensor([ids]), None, [exit_])[exit_][0, -1].argmax()))
            ids.append(out[-1])
    return out


def main(gguf: Path, out: Path, exits: list[int]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ckpt = as_checkpoint(gguf, out, exits)
    net, _, _ = load_sorted(str(ckpt))
    tokenizer = load_tokenizer(str(gguf))
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True, return_dict=False)
    ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
    print(f"{time.strftime('%Y-%m-%d')}; prompt of {len(ids)} tokens; {NEW_TOKENS} greedy tokens; {torch.__version__}")
    print("| exit | dtype | file MiB | max abs diff | argmax agree | greedy equal prefix | llama.cpp tok/s |")
    print("|---|---|---|---|---|---|---|")
    full_speed = {}
    for exit_ in sorted(exits, reverse=True):
        with torch.no_grad():
            ours = net.exit_logits(torch.tensor([ids]), None, [exit_])[exit_][0].numpy()
        continuation = ours_greedy(net, exit_, ids, NEW_TOKENS)
        for dtype in ("float32", "q8_0"):
            file = out / f"exit_{exit_}.{dtype}.gguf"
            if not file.exists():
                export_gguf(ExportConfig(ckpt=str(ckpt), exit=exit_, out=str(file), dtype=dtype), file)
            # float32: with a float32 KV cache, to check the file exactly; q8_0: llama.cpp's default (float16) cache
            llm = open_gguf(file, n_ctx=256, float32_cache=dtype == "float32")
            theirs = logits(llm, ids)
            agree = float((theirs.argmax(-1) == ours.argmax(-1)).mean())
            ran = greedy(llm, ids, NEW_TOKENS)
            prefix = next((i for i, (a, b) in enumerate(zip(ran, continuation, strict=True)) if a != b), NEW_TOKENS)
            speed = decode_speed(llm, ids, 64)
            full_speed.setdefault(dtype, speed)
            print(
                f"| {exit_} | {dtype} | {file.stat().st_size / 2**20:.1f} | {np.abs(theirs - ours).max():.2e} | "
                f"{agree:.3f} | {prefix}/{NEW_TOKENS} | {speed:.1f} ({speed / full_speed[dtype]:.2f}x) |"
            )
            if exit_ == max(exits) and dtype == "float32":
                print(f"<!-- exit {exit_} llama.cpp greedy: {tokenizer.decode(ran)!r} -->")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), [int(e) for e in sys.argv[3:]] or [18, 30])
