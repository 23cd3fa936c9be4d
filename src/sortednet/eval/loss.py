"""Per-exit validation loss and perplexity, tokenized and masked exactly as in training.

The loss of an exit is the token mean of its cross-entropy over every response token of the data set
(not a mean of batch means), so the batch size does not change it.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from sortednet.config import DataConfig
from sortednet.data.alpaca import Collator, pad_id, tokenize_rows, tokenized_split
from sortednet.data.rows import check_rows
from sortednet.data.triviaqa import training_rows  # TriviaQA files become question -> answer rows, as in training
from sortednet.eval.checkpoints import each_checkpoint
from sortednet.eval.generation import checkpoint_stamp
from sortednet.eval.output import plot_per_exit, show_table
from sortednet.hub import EMBEDDED, default_cache_dir
from sortednet.loss import count_labels


def validation_rows(
    data: str, tokenizer, prompt_style: str, max_length: int = 512, cache_dir=None, limit: int | None = None
) -> list[dict]:
    """``{"input_ids", "labels"}`` rows: the embedded set's validation split (the split training makes with
    its default settings) for ``data="embedded"``, else every row of the Alpaca-format (or TriviaQA) file ``data``."""
    if data == EMBEDDED:
        config = DataConfig(path=EMBEDDED, prompt_style=prompt_style, max_length=max_length)
        dataset, _, val_idx = tokenized_split(config, tokenizer, cache_dir or default_cache_dir())
        columns = dataset.select(val_idx).select_columns(["input_ids", "labels"]).to_dict()
    else:
        rows = check_rows(training_rows(data), data)
        columns = tokenize_rows(rows, tokenizer, prompt_style, max_length, mask_prompt=True)
    rows = [
        {"input_ids": i, "labels": labels} for i, labels in zip(columns["input_ids"], columns["labels"], strict=True)
    ]
    return rows[:limit] if limit is not None else rows


@torch.no_grad()
def per_exit_loss(net, rows: list[dict], exits: list[int], pad: int, batch_size: int = 8) -> dict[int, dict]:
    """``{exit: {"loss", "ppl", "accept", "agree", "tokens"}}``: the token-mean cross-entropy of each exit over
    ``rows``, and its agreement with the model's last exit at the same positions (the expected acceptance of a
    speculative draft and the greedy agreement, :func:`sortednet.loss.exit_metrics`; 1 at the last exit).

    Batches are cut from the rows sorted by length, so a batch pads to nearly its own rows' length (on Alpaca
    rows of <= 256 tokens this halves the positions computed); a token mean does not depend on the order."""
    device = next(net.parameters()).device
    collate = Collator(pad)
    measured = sorted({*exits, net.num_layers})
    sums = dict.fromkeys(measured, 0.0)
    accepted, agreed = dict.fromkeys(measured, 0.0), dict.fromkeys(measured, 0.0)
    tokens = 0
    rows = sorted(rows, key=lambda row: len(row["input_ids"]))
    for start in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate(rows[start : start + batch_size]).items()}
        n = count_labels(batch["labels"])
        if n == 0:
            continue
        losses, agreement = net.exit_metrics(batch["input_ids"], batch["attention_mask"], batch["labels"], measured)
        for e in measured:
            sums[e] += float(losses[e]) * n
            accept, agree = agreement.get(e, (n, n))
            accepted[e] += float(accept)
            agreed[e] += float(agree)
        tokens += n
    result = {}
    for e in exits:
        loss = sums[e] / tokens if tokens else float("nan")
        result[e] = {"loss": loss, "ppl": math.exp(loss) if loss < 700 else float("inf")}
        result[e] |= {"accept": accepted[e] / max(tokens, 1), "agree": agreed[e] / max(tokens, 1), "tokens": tokens}
    return result


def loss_suite(net, tokenizer, meta: dict, exits: list[int], data: str, batch_size: int, **rows_kwargs) -> list[dict]:
    """One row per exit: exit, loss, ppl, tokens, rows (for one checkpoint)."""
    rows = validation_rows(data, tokenizer, meta.prompt_style, **rows_kwargs)
    values = per_exit_loss(net, rows, exits, pad_id(tokenizer), batch_size)
    return [{"exit": e, **values[e], "rows": len(rows)} for e in exits]


def loss_settings(settings, ckpt_path: str) -> dict:
    """What a checkpoint's per-exit loss depends on, recorded in ``loss.csv`` so ``suite=pareto metric=loss``
    in the same ``out`` reads it instead of computing it again."""
    data = settings.data or EMBEDDED
    return {
        "data": data,
        "data_stamp": checkpoint_stamp(data) if Path(data).expanduser().is_file() else "",
        "max_length": settings.max_length,
        "limit": "" if settings.limit is None else settings.limit,
        "ckpt": ckpt_path,
        "ckpt_stamp": checkpoint_stamp(ckpt_path),
    }


def checkpoint_losses(settings, ckpt) -> list[dict]:
    """One row per exit of the loaded checkpoint ``ckpt`` (:func:`loss_suite` with the command's settings)."""
    return loss_suite(
        ckpt.net, ckpt.tokenizer, ckpt.meta, ckpt.exits, settings.data or EMBEDDED, settings.batch_size,
        max_length=settings.max_length, cache_dir=settings.cache_dir, limit=settings.limit,
    )  # fmt: skip


def recorded_loss(root: Path, settings: dict, exits: list[int]) -> dict[int, float] | None:
    """``{exit: loss}`` from ``loss.csv`` in ``root`` when suite=loss wrote every exit asked for under the same
    settings (rows, max_length, limit, the checkpoint and data files unchanged); else None."""
    path = root / "loss.csv"
    if not path.is_file():
        return None
    wanted = {key: str(value) for key, value in settings.items()}
    with path.open(encoding="utf-8") as handle:
        found = {
            int(record["exit"]): float(record["loss"])
            for record in csv.DictReader(handle)
            if all(record.get(key) == value for key, value in wanted.items())
        }
    return {e: found[e] for e in exits} if all(e in found for e in exits) else None


def run(settings, paths: list[str], names: list[str], out) -> list[dict]:
    """suite=loss: every exit of every checkpoint -> ``loss.csv`` (with :func:`loss_settings`), ``loss.png``."""
    data = settings.data or EMBEDDED
    table = []
    for ckpt in each_checkpoint(settings, paths, names):
        table += [
            {"name": ckpt.name, **row, **loss_settings(settings, ckpt.path)}
            for row in checkpoint_losses(settings, ckpt)
        ]
    out.table("loss", table)
    out.figure("loss", plot_per_exit(table, [("loss", "validation loss (response tokens)")], f"per-exit loss, {data}"))
    show_table(table, ["name", "exit", "loss", "ppl", "accept", "agree", "tokens", "rows"], f"per-exit loss on {data}")
    return table
