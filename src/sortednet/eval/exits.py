"""Per-exit greedy answers and exact-match accuracy on held-out instruction rows."""

from __future__ import annotations

import math

import torch

from sortednet.inference.decode import decode_all
from sortednet.metrics import mean_score
from sortednet.model import SortedLM
from sortednet.tables import markdown_table


@torch.no_grad()
def greedy_ids(
    net: SortedLM,
    tokenizer,
    prompt_ids: list[list[int]],
    exit_: int,
    max_new_tokens: int,
    batch_size: int = 32,
) -> list[list[int]]:
    """Greedy continuations of tokenized prompts by sub-model ``exit_`` (``batch_size`` prompts decoded
    together, KV cache): the generated token ids of each prompt, up to and including its first EOS. The
    decoder is :func:`sortednet.inference.decode.generate_batch`, the one ``sortednet.generate`` uses."""
    eos = tokenizer.eos_token_id
    return decode_all(net, prompt_ids, max_new_tokens, eos, batch_size, mode="exit", exit=exit_)[0]


def greedy_answers(net: SortedLM, tokenizer, prompt_ids, exit_, max_new_tokens, batch_size=32) -> list[str]:
    """:func:`greedy_ids` (the same arguments), as text (special tokens dropped)."""
    generated = greedy_ids(net, tokenizer, prompt_ids, exit_, max_new_tokens, batch_size)
    return tokenizer.batch_decode(generated, skip_special_tokens=True)


def exact_match(answers: list[str], references: list[str]) -> float:
    """Share of answers equal to their reference after stripping surrounding whitespace (0 for none)."""
    return mean_score(answers, references, "exact_match")


def exit_report(module, datamodule, tokenizer, metrics: dict, settings) -> list[dict]:
    """One row per exit: layers, parameters, validation loss and perplexity (from ``metrics``, the logged
    ``val/loss_exit_{n}``), agreement with the last exit on the validation rows (``val/accept_exit_{n}``: expected
    acceptance of a speculative draft; ``val/agree_exit_{n}``: greedy agreement; 1 at the last exit), and the exact
    match of greedy answers to held-out rows."""
    net = module.net.eval()
    rows = datamodule.val_rows.select(range(min(settings.num_generate, len(datamodule.val_rows))))
    prompts = [ids[:n] for ids, n in zip(rows["input_ids"], rows["prompt_len"], strict=True)]
    embedding = net.lm.get_input_embeddings().weight
    per_layer = sum(p.numel() for p in net.decoder.layers[0].parameters())
    report = []
    for e in module.eval_exits:
        loss = float(metrics.get(f"val/loss_exit_{e}", float("nan")))
        row = {
            "exit": e,
            "layers": e,
            "params_M": sum(p.numel() for p in {embedding, net.head(e).weight}) / 1e6 + e * per_layer / 1e6,
            "val_loss": loss,
            "val_ppl": math.exp(loss),
        }
        for name in ("accept", "agree"):
            last = e == module.eval_exits[-1]
            row[name] = 1.0 if last else float(metrics.get(f"val/{name}_exit_{e}", float("nan")))
        if prompts:
            answers = greedy_answers(net, tokenizer, prompts, e, settings.max_new_tokens)
            row["exact_match"] = exact_match(answers, rows["output"])
        report.append(row)
    return report


def format_report(report: list[dict], title: str = "") -> str:
    """The per-exit table in Markdown (stdout, also pasted into experiments/)."""
    names = ("exit", "layers", "params_M", "val_loss", "val_ppl", "accept", "agree", "exact_match")
    columns = [c for c in names if c in report[0]]
    cells = [[f"{row[c]:d}" if isinstance(row[c], int) else f"{row[c]:.3f}" for c in columns] for row in report]
    return markdown_table(columns, cells, title)
