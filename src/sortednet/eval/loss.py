"""Per-exit validation loss and perplexity, tokenized and masked exactly as in training.

The loss of an exit is the token mean of its cross-entropy over every response token of the data set
(not a mean of batch means), so the batch size does not change it.
"""

from __future__ import annotations

import math

import torch

from sortednet.data.alpaca import Collator, pad_id, tokenize_rows
from sortednet.data.rows import check_rows
from sortednet.data.triviaqa import training_rows  # TriviaQA files become question -> answer rows, as in training
from sortednet.loss import count_labels

EMBEDDED = "embedded"


def validation_rows(
    data: str, tokenizer, prompt_style: str, max_length: int = 512, cache_dir=None, limit: int | None = None
) -> list[dict]:
    """``{"input_ids", "labels"}`` rows: the embedded set's validation split (the split training makes with
    its default settings) for ``data="embedded"``, else every row of the Alpaca-format (or TriviaQA) file ``data``."""
    if data == EMBEDDED:
        from sortednet.config import DataConfig
        from sortednet.data.alpaca import tokenized_split
        from sortednet.hub import default_cache_dir

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
    """``{exit: {"loss", "ppl", "tokens"}}``: the token-mean cross-entropy of each exit over ``rows``.

    Batches are cut from the rows sorted by length, so a batch pads to nearly its own rows' length (on Alpaca
    rows of <= 256 tokens this halves the positions computed); a token mean does not depend on the order."""
    device = next(net.parameters()).device
    collate = Collator(pad)
    sums = dict.fromkeys(exits, 0.0)
    tokens = 0
    rows = sorted(rows, key=lambda row: len(row["input_ids"]))
    for start in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate(rows[start : start + batch_size]).items()}
        n = count_labels(batch["labels"])
        if n == 0:
            continue
        _, losses = net.exit_losses(batch["input_ids"], batch["attention_mask"], batch["labels"], exits)
        for e in exits:
            sums[e] += float(losses[e]) * n
        tokens += n
    result = {}
    for e in exits:
        loss = sums[e] / tokens if tokens else float("nan")
        result[e] = {"loss": loss, "ppl": math.exp(loss) if loss < 700 else float("inf"), "tokens": tokens}
    return result


def loss_suite(net, tokenizer, meta: dict, exits: list[int], data: str, batch_size: int, **rows_kwargs) -> list[dict]:
    """One row per exit: exit, loss, ppl, tokens, rows (for one checkpoint)."""
    rows = validation_rows(data, tokenizer, meta.get("prompt_style", "alpaca"), **rows_kwargs)
    values = per_exit_loss(net, rows, exits, pad_id(tokenizer), batch_size)
    return [{"exit": e, **values[e], "rows": len(rows)} for e in exits]
