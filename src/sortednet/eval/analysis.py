"""How close each exit is to a last layer, token by token (the Sorted LLaMA paper's KL / cosine analysis).

For every prompt, a *reference* model's last layer writes a greedy continuation (``positions`` tokens at
most, ending early at EOS, which counts as a generated token). Prompt + continuation are then teacher-forced
through the evaluated model; at each generated position ``t`` (the distribution that predicts generated token
``t``, ``t = 0`` being the first) and each exit ``e``:

- ``kl``: KL(P_ref || P_e) in nats, P_ref the reference last layer's next-token distribution (float64);
- ``cosine``: cosine similarity of the hidden states that enter the heads (after the final norm).

Results are averaged over the prompts that reach position ``t``: a continuation that stopped at EOS before
``t`` contributes nothing there, and ``n`` says how many prompts did. The reference is the evaluated model
itself by default, or a second model sharing its tokenizer and width (e.g. SoFT's exits against SFT's
last layer).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from sortednet.data.alpaca import pad_id
from sortednet.errors import SortedNetError
from sortednet.eval.checkpoints import requested_exits
from sortednet.eval.exits import greedy_ids
from sortednet.eval.generation import encode, read_instructions
from sortednet.eval.output import pyplot, show_table
from sortednet.inference.load import load_sorted, prompt_style_of, resolve_device
from sortednet.io import write_file_atomically, write_text_atomically
from sortednet.model import SortedLM

FIELDS = ("exit", "position", "kl", "cosine", "n")


def greedy_continuations(
    net: SortedLM, tokenizer, prompts_ids: Sequence[Sequence[int]], positions: int, batch_size: int = 8
) -> list[list[int]]:
    """The last layer's greedy continuation of each prompt: at most ``positions`` token ids, cut after the
    first EOS (kept: it is a generated token)."""
    return greedy_ids(net, tokenizer, [list(p) for p in prompts_ids], net.num_layers, positions, batch_size)


def _same_tokenizer(a, b) -> bool:
    if a is b:
        return True
    specials = ("bos_token_id", "eos_token_id", "pad_token_id")
    return all(getattr(a, s) == getattr(b, s) for s in specials) and a.get_vocab() == b.get_vocab()


def _check_inputs(net, tokenizer, prompts_ids, exits, reference, positions) -> list[int]:
    if not prompts_ids or any(len(p) == 0 for p in prompts_ids):
        raise SortedNetError("exit_similarity needs at least one prompt, and no empty prompt")
    if not isinstance(positions, int) or positions < 1:
        raise SortedNetError(f"positions={positions!r}: give a whole number of generated positions >= 1")
    bad = [e for e in exits if not (isinstance(e, int) and 1 <= e <= net.num_layers)]
    if bad or not exits:
        raise SortedNetError(f"exits {list(exits)} must be layer counts in [1, {net.num_layers}]; fix the exits list")
    if reference is not None:
        ref_net, ref_tokenizer = reference
        if not _same_tokenizer(tokenizer, ref_tokenizer):
            raise SortedNetError(
                "the reference model's tokenizer differs from the evaluated model's (vocabulary or special tokens); "
                "compare models that share a tokenizer"
            )
        own, ref = net.lm_head, ref_net.lm_head
        if own.out_features != ref.out_features:
            raise SortedNetError(
                f"the models' heads have {own.out_features} and {ref.out_features} logits (the reference's); "
                f"KL needs the same vocabulary"
            )
        if own.in_features != ref.in_features:
            raise SortedNetError(
                f"the models' hidden states have {own.in_features} and {ref.in_features} dimensions (the "
                f"reference's); cosine similarity needs equal widths"
            )
    return sorted(set(exits))


def _teacher_forcing_batch(chunk, pad: int, device) -> tuple[torch.Tensor, ...]:
    """Right-padded prompt + continuation ids, their mask, the positions whose outputs predict the continuation,
    and the generated-token index ``t`` of each such position (in the row-major order of a boolean index)."""
    width = max(len(p) + len(c) for p, c in chunk)
    ids = torch.full((len(chunk), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    at = torch.zeros_like(ids, dtype=torch.bool)
    step = torch.zeros_like(ids)
    for i, (prompt, continuation) in enumerate(chunk):
        n_prompt, n_new = len(prompt), len(continuation)
        ids[i, : n_prompt + n_new] = torch.tensor([*prompt, *continuation])
        mask[i, : n_prompt + n_new] = 1
        at[i, n_prompt - 1 : n_prompt - 1 + n_new] = True
        step[i, n_prompt - 1 : n_prompt - 1 + n_new] = torch.arange(n_new)
    return ids.to(device), mask.to(device), at.to(device), step[at]


@torch.no_grad()
def exit_similarity(
    net: SortedLM,
    tokenizer,
    prompts_ids: Sequence[Sequence[int]],
    exits: Sequence[int],
    *,
    reference: tuple[SortedLM, object] | None = None,
    positions: int = 20,
    batch_size: int = 8,
) -> list[dict]:
    """Per (exit, generated position): mean KL(P_ref_last || P_exit) in nats and mean cosine of the pre-head
    hidden states over the prompts, in long format ``{exit, position, kl, cosine, n}`` (exits ascending, then
    positions; positions no prompt reached are left out). See the module docstring for the procedure.

    ``prompts_ids`` are tokenized prompts (as training tokenizes them); ``reference`` is ``(SortedLM, tokenizer)``
    of a second model, or ``None`` for ``net``'s own last layer.
    """
    exits = _check_inputs(net, tokenizer, prompts_ids, exits, reference, positions)
    ref_net = reference[0] if reference is not None else net
    device = next(net.parameters()).device
    ref_device = next(ref_net.parameters()).device
    last, ref_last = net.num_layers, ref_net.num_layers
    continuations = greedy_continuations(ref_net, tokenizer, prompts_ids, positions, batch_size)
    pairs = [(list(p), c) for p, c in zip(prompts_ids, continuations, strict=True) if c]

    kl_sum = {e: torch.zeros(positions, dtype=torch.float64) for e in exits}
    cos_sum = {e: torch.zeros(positions, dtype=torch.float64) for e in exits}
    count = torch.zeros(positions, dtype=torch.long)
    pad = pad_id(tokenizer)
    for start in range(0, len(pairs), batch_size):
        ids, mask, at, step = _teacher_forcing_batch(pairs[start : start + batch_size], pad, device)
        wanted = sorted(set(exits) | ({last} if reference is None else set()))
        hidden = net.exit_hidden_states(ids, mask, wanted, positions=at)
        if reference is None:
            ref_hidden = hidden[last]
        else:
            ref_ids, ref_mask, ref_at = (t.to(ref_device) for t in (ids, mask, at))
            ref_hidden = ref_net.exit_hidden_states(ref_ids, ref_mask, [ref_last], positions=ref_at)[ref_last]
        log_p = F.log_softmax(ref_net.head(ref_last)(ref_hidden).double(), dim=-1).to(device)
        ref_hidden = ref_hidden.to(device).double()
        for e in exits:
            log_q = F.log_softmax(net.head(e)(hidden[e]).double(), dim=-1)
            kl = (log_p.exp() * (log_p - log_q)).sum(-1)
            cosine = F.cosine_similarity(hidden[e].double(), ref_hidden, dim=-1)
            kl_sum[e].index_add_(0, step, kl.cpu())
            cos_sum[e].index_add_(0, step, cosine.cpu())
        count.index_add_(0, step, torch.ones_like(step))

    return [
        {
            "exit": e,
            "position": t,
            "kl": (kl_sum[e][t] / count[t]).item(),
            "cosine": (cos_sum[e][t] / count[t]).item(),
            "n": int(count[t]),
        }
        for e in exits
        for t in range(positions)
        if count[t] > 0
    ]


def write_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """The rows as CSV (columns in first-seen order: exit, position, kl, cosine, n, then any added ones)."""
    columns = list(dict.fromkeys(key for row in rows for key in row)) or list(FIELDS)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(path, text.getvalue())
    return Path(path)


def plot_curves(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Two panels, KL and cosine against the generated position, one line per exit (per ``label`` and exit
    when rows carry a ``label``, e.g. to overlay two models), saved as a PNG."""
    plt = pyplot()

    if not rows:
        raise SortedNetError("no similarity rows to plot")
    series: dict[tuple, list[dict]] = {}
    for row in rows:
        series.setdefault((row.get("label", ""), row["exit"]), []).append(row)
    colors = plt.get_cmap("viridis")
    exits = sorted({e for _, e in series})
    figure, (kl_axis, cos_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = list(dict.fromkeys(label for label, _ in series))
    styles = {label: ("-", "--", ":", "-.")[i % 4] for i, label in enumerate(labels)}
    for (label, exit_), points in series.items():
        points = sorted(points, key=lambda r: r["position"])
        x = [r["position"] for r in points]
        style = dict(
            color=colors(exits.index(exit_) / max(len(exits) - 1, 1)),
            linestyle=styles[label],
            marker=".",
            label=f"{label} exit {exit_}".strip(),
        )
        kl_axis.plot(x, [r["kl"] for r in points], **style)
        cos_axis.plot(x, [r["cosine"] for r in points], **style)
    kl_axis.set(xlabel="generated position (0 = first token)", ylabel="KL(last layer || exit) [nats]", title="KL")
    cos_axis.set(xlabel="generated position (0 = first token)", ylabel="cosine similarity", title="cosine")
    for axis in (kl_axis, cos_axis):
        axis.grid(alpha=0.3)
    cos_axis.legend(fontsize="small", loc="best")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    try:
        write_file_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(figure)
    return Path(path)


def run(settings, paths: list[str], names: list[str], out) -> list[dict]:
    """suite=analysis: the exits of checkpoint 1 against its own last layer, and against the last layer of
    checkpoint 2 when given -> ``analysis.csv/png``."""
    if len(paths) > 2:
        raise SortedNetError(f"suite=analysis compares one checkpoint with its own or a second one; got {len(paths)}")
    items = read_instructions(settings.instructions, settings.limit, settings.cache_dir)
    device = resolve_device(settings.device)
    net, tokenizer, meta = load_sorted(paths[0], settings.cache_dir, device)
    exits = requested_exits(settings, meta, names[0])
    prompts = encode(items, tokenizer, prompt_style_of(meta, tokenizer), net, settings.positions)
    common = dict(positions=settings.positions, batch_size=settings.batch_size)
    table = [
        {"label": f"vs {names[0]}@{net.num_layers}", **row}
        for row in exit_similarity(net, tokenizer, prompts, exits, **common)
    ]
    if len(paths) == 2:
        other, other_tokenizer, _ = load_sorted(paths[1], settings.cache_dir, device)
        rows = exit_similarity(net, tokenizer, prompts, exits, reference=(other, other_tokenizer), **common)
        table += [{"label": f"vs {names[1]}@{other.num_layers}", **row} for row in rows]
    table = [{"name": names[0], **row} for row in table]
    out.table("analysis", table)
    title = f"exits of {names[0]} vs last layers, {len(items)} prompts"
    out.image("analysis", plot_curves(table, out.path("analysis.png"), title=title))
    first = [r for r in table if r["position"] == 0]
    show_table(first, ["label", "exit", "kl", "cosine", "n"], "KL and cosine at the first generated position")
    return table
