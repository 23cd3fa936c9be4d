"""KL / cosine of each exit against a last layer, per generated position; CSV and plot."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import one_line, save_tiny
from sortednet.errors import SortedNetError
from sortednet.eval.analysis import exit_similarity, greedy_continuations, plot_curves, write_csv
from sortednet.model import SortedLM
from sortednet.prompts import ALPACA

INSTRUCTIONS = ["What color is the apple?", "What is 3 plus 4?", "Write the words in reverse order."]
EXITS = [2, 4, 8]


@pytest.fixture(scope="module")
def net(embedded_root):
    from transformers import AutoModelForCausalLM

    return SortedLM(AutoModelForCausalLM.from_pretrained(embedded_root / "model")).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer(ALPACA.format(i))["input_ids"] for i in INSTRUCTIONS]


def _by_exit(rows: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for row in rows:
        out.setdefault(row["exit"], []).append(row)
    return out


def _manual_greedy(net: SortedLM, prompt: list[int], steps: int, eos: int) -> list[int]:
    """Greedy decoding written out: the argmax of the full forward at the last position, one token at a time."""
    ids, new = list(prompt), []
    for _ in range(steps):
        logits = net.exit_logits(torch.tensor([ids]), None, [net.num_layers])[net.num_layers]
        token = int(logits[0, -1].argmax())
        ids.append(token)
        new.append(token)
        if token == eos:
            break
    return new


def test_last_exit_against_itself_is_zero_kl_and_unit_cosine(net, tokenizer, prompts):
    rows = exit_similarity(net, tokenizer, prompts, EXITS, positions=6, batch_size=2)
    last = _by_exit(rows)[8]
    assert [r["position"] for r in last] == list(range(6))
    for row in last:
        assert abs(row["kl"]) <= 1e-6 and abs(row["cosine"] - 1) <= 1e-6


def test_kl_is_finite_non_negative_and_shallow_exits_differ(net, tokenizer, prompts):
    rows = exit_similarity(net, tokenizer, prompts, EXITS, positions=6, batch_size=2)
    assert {(r["exit"], r["position"]) for r in rows} == {(e, t) for e in EXITS for t in range(6)}
    for row in rows:
        assert math.isfinite(row["kl"]) and row["kl"] >= 0
        assert math.isfinite(row["cosine"]) and -1 - 1e-9 <= row["cosine"] <= 1 + 1e-9
        assert 1 <= row["n"] <= len(prompts)
    for row in _by_exit(rows)[2]:
        assert row["kl"] > 1e-4 and row["cosine"] < 0.999


def test_positions_cap_the_continuation_and_every_prompt_counts_at_position_zero(net, tokenizer, prompts):
    rows = exit_similarity(net, tokenizer, prompts, [4, 8], positions=3, batch_size=3)
    assert {r["position"] for r in rows} <= {0, 1, 2}
    assert all(r["n"] == len(prompts) for r in rows if r["position"] == 0)
    continuations = greedy_continuations(net, tokenizer, prompts, 3, batch_size=3)
    assert all(1 <= len(c) <= 3 for c in continuations)
    for t in range(3):
        reached = sum(len(c) > t for c in continuations)
        assert [r["n"] for r in rows if r["position"] == t] == ([reached] * 2 if reached else [])


def test_one_kl_and_cosine_by_hand(net, tokenizer, prompts):
    prompt, steps = prompts[0], 5
    continuation = _manual_greedy(net, prompt, steps, tokenizer.eos_token_id)
    assert greedy_continuations(net, tokenizer, [prompt], steps) == [continuation]
    rows = exit_similarity(net, tokenizer, [prompt], [2, 8], positions=steps)

    full = torch.tensor([prompt + continuation])
    logits = net.exit_logits(full, None, [2, 8])
    hidden = net.exit_hidden_states(full, None, [2, 8])
    t = 2
    at = len(prompt) - 1 + t  # the output there predicts generated token t
    assert int(logits[8][0, at].argmax()) == continuation[t]
    p = torch.softmax(logits[8][0, at].double(), -1)
    q = torch.softmax(logits[2][0, at].double(), -1)
    kl = float((p * (p.log() - q.log())).sum())
    cosine = float(F.cosine_similarity(hidden[2][0, at].double(), hidden[8][0, at].double(), dim=0))
    row = next(r for r in rows if r["exit"] == 2 and r["position"] == t)
    assert row["n"] == 1 and kl > 1e-4
    assert row["kl"] == pytest.approx(kl, rel=1e-6) and row["cosine"] == pytest.approx(cosine, rel=1e-6)


def test_batched_equals_one_prompt_at_a_time(net, tokenizer, prompts):
    together = exit_similarity(net, tokenizer, prompts, [2, 8], positions=4, batch_size=3)
    alone = [exit_similarity(net, tokenizer, [p], [2, 8], positions=4, batch_size=1) for p in prompts]
    for row in together:
        parts = [r for rows in alone for r in rows if (r["exit"], r["position"]) == (row["exit"], row["position"])]
        assert row["n"] == sum(r["n"] for r in parts)
        assert row["kl"] == pytest.approx(sum(r["kl"] * r["n"] for r in parts) / row["n"], rel=1e-4, abs=1e-6)
        assert row["cosine"] == pytest.approx(sum(r["cosine"] * r["n"] for r in parts) / row["n"], rel=1e-4)


def _second_model(tmp_path, tokenizer, **overrides) -> SortedLM:
    from transformers import AutoModelForCausalLM

    settings = dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=96, num_hidden_layers=3)
    path = save_tiny("llama", tmp_path / "second", **{**settings, **overrides})
    return SortedLM(AutoModelForCausalLM.from_pretrained(path)).eval().requires_grad_(False)


def test_the_model_itself_as_reference_matches_the_default(net, tokenizer, prompts):
    default = exit_similarity(net, tokenizer, prompts, [2, 8], positions=4)
    explicit = exit_similarity(net, tokenizer, prompts, [2, 8], reference=(net, tokenizer), positions=4)
    assert [(r["exit"], r["position"], r["n"]) for r in default] == [
        (r["exit"], r["position"], r["n"]) for r in explicit
    ]
    for a, b in zip(default, explicit, strict=True):
        assert a["kl"] == pytest.approx(b["kl"], abs=1e-9) and a["cosine"] == pytest.approx(b["cosine"], abs=1e-9)


def test_a_second_model_as_reference(net, tokenizer, prompts, tmp_path):
    other = _second_model(tmp_path, tokenizer)
    prompt, steps = prompts[1], 4
    rows = exit_similarity(net, tokenizer, [prompt], [4, 8], reference=(other, tokenizer), positions=steps)
    continuation = _manual_greedy(other, prompt, steps, tokenizer.eos_token_id)  # the reference writes it
    full = torch.tensor([prompt + continuation])
    own_logits, own_hidden = net.exit_logits(full, None, [8])[8], net.exit_hidden_states(full, None, [8])[8]
    ref_logits, ref_hidden = other.exit_logits(full, None, [3])[3], other.exit_hidden_states(full, None, [3])[3]
    last = [r for r in rows if r["exit"] == 8]
    assert len(last) == len(continuation)
    for row in last:
        at = len(prompt) - 1 + row["position"]
        log_p = torch.log_softmax(ref_logits[0, at].double(), -1)
        log_q = torch.log_softmax(own_logits[0, at].double(), -1)
        kl = float((log_p.exp() * (log_p - log_q)).sum())
        cosine = float(F.cosine_similarity(own_hidden[0, at].double(), ref_hidden[0, at].double(), dim=0))
        assert row["kl"] == pytest.approx(kl, rel=1e-6) and row["cosine"] == pytest.approx(cosine, rel=1e-6, abs=1e-9)
        assert row["kl"] > 1e-4  # a different model's last layer is not this one's


def test_mismatched_reference_gives_one_line_errors(net, tokenizer, prompts, tmp_path, embedded_root):
    from transformers import AutoTokenizer

    other_tokenizer = AutoTokenizer.from_pretrained(embedded_root / "tokenizer")
    other_tokenizer.add_tokens(["zzqx"])
    with pytest.raises(SortedNetError) as error:
        exit_similarity(net, tokenizer, prompts, [8], reference=(net, other_tokenizer))
    assert "tokenizer differs" in one_line(error)

    narrow = _second_model(tmp_path / "narrow", tokenizer, hidden_size=32)
    with pytest.raises(SortedNetError) as error:
        exit_similarity(net, tokenizer, prompts, [8], reference=(narrow, tokenizer))
    assert "128 and 32 dimensions" in one_line(error) and "equal widths" in str(error.value)

    wider_vocab = _second_model(tmp_path / "vocab", tokenizer, vocab_size=len(tokenizer) + 5)
    with pytest.raises(SortedNetError) as error:
        exit_similarity(net, tokenizer, prompts, [8], reference=(wider_vocab, tokenizer))
    assert "same vocabulary" in one_line(error)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(exits=[0, 8]), "[1, 8]"),
        (dict(exits=[9]), "[1, 8]"),
        (dict(positions=0), "positions=0"),
        (dict(prompts_ids=[]), "at least one prompt"),
    ],
)
def test_bad_arguments_give_one_line_errors(net, tokenizer, prompts, kwargs, message):
    arguments = {"prompts_ids": prompts, "exits": [8], "positions": 4, **kwargs}
    with pytest.raises(SortedNetError) as error:
        exit_similarity(net, tokenizer, arguments.pop("prompts_ids"), arguments.pop("exits"), **arguments)
    assert message in one_line(error)


def test_csv_and_png_are_written(net, tokenizer, prompts, tmp_path):
    rows = exit_similarity(net, tokenizer, prompts, [2, 8], positions=3)
    file = write_csv(rows, tmp_path / "out" / "similarity.csv")
    with file.open(newline="") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == ["exit", "position", "kl", "cosine", "n"]
    assert [(int(r["exit"]), int(r["position"]), float(r["kl"]), float(r["cosine"]), int(r["n"])) for r in read] == [
        (r["exit"], r["position"], r["kl"], r["cosine"], r["n"]) for r in rows
    ]
    labelled = [{**r, "label": "SoFT"} for r in rows] + [{**r, "label": "SFT", "kl": r["kl"] / 2} for r in rows]
    for name, data in (("one.png", rows), ("two.png", labelled)):
        png = plot_curves(data, tmp_path / "out" / name, title="exits vs the last layer")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with pytest.raises(SortedNetError):
        plot_curves([], tmp_path / "none.png")


class _EndsAt:
    """The tokenizer with another token as EOS, to make a continuation stop early."""

    def __init__(self, tokenizer, eos: int):
        self._tokenizer, self.eos_token_id = tokenizer, eos

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_positions_after_eos_contribute_no_samples(net, tokenizer, prompts):
    free = greedy_continuations(net, tokenizer, prompts, 6)
    stop = free[0][1]  # the first prompt's second generated token becomes EOS
    ending = _EndsAt(tokenizer, stop)
    cut = greedy_continuations(net, ending, prompts, 6)
    assert cut[0] == free[0][: free[0].index(stop) + 1]
    assert all(c == f[: f.index(stop) + 1] if stop in f else c == f for c, f in zip(cut, free, strict=True))
    rows = exit_similarity(net, ending, prompts, [8], positions=6)
    assert [r["n"] for r in rows] == [n for n in (sum(len(c) > t for c in cut) for t in range(6)) if n]
    n_at = {r["position"]: r["n"] for r in rows}
    assert n_at[1] == len(prompts) and n_at.get(2, 0) < len(prompts)  # the first prompt's EOS is at position 1
