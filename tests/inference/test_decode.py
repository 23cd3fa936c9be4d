"""Decoding with exits: exit-K, lossless self-speculative, per-token dynamic exit with exact lazy KVs."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import save_tiny
from sortednet.errors import SortedNetError
from sortednet.inference import decode
from sortednet.inference.decode import generate, generate_batch
from sortednet.model import SortedLM

PROMPT = [3, 14, 15, 92, 65, 35, 8, 9]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def net(request, tmp_path_factory):
    """A tiny random model whose shallow exits are sharpened so drafts are often right and exits fire."""
    path = save_tiny(request.param, tmp_path_factory.mktemp(request.param), num_hidden_layers=6)
    lm = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        lm.lm_head.weight.mul_(30)
    return SortedLM(lm)


def hf_greedy(net: SortedLM, exit_: int, n: int) -> list[int]:
    with net.at_exit(exit_) as sub:
        out = sub.generate(input_ids=torch.tensor([PROMPT]), do_sample=False, max_new_tokens=n, eos_token_id=None)
    return out[0, len(PROMPT) :].tolist()


@pytest.mark.parametrize("exit_", [1, 3, 6])
def test_exit_k_greedy_equals_hf_generate_at_that_exit(net, exit_):
    tokens, stats = generate(net, PROMPT, mode="exit", exit=exit_, max_new_tokens=24)
    assert tokens == hf_greedy(net, exit_, 24) and stats["tokens"] == 24
    assert stats["layer_evals_per_token"] == pytest.approx(exit_ * (len(PROMPT) + 23) / 24)


@pytest.mark.parametrize("draft_exit", [1, 2, 4, 5])
def test_speculative_greedy_is_the_full_models_greedy(net, draft_exit):
    tokens, stats = generate(net, PROMPT, mode="speculative", draft_exit=draft_exit, max_new_tokens=40)
    assert tokens == hf_greedy(net, 6, 40)
    assert stats["drafted"] > 0 and 0 <= stats["acceptance"] <= 1


def test_speculative_reuses_the_drafts_layers():
    """Every position goes through each layer once, plus only the rejected drafts: no layer is redone."""
    torch.manual_seed(0)
    from transformers import LlamaConfig, LlamaForCausalLM

    lm = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2)).eval()  # fmt: skip
    net = SortedLM(lm)
    prompt = [3, 14, 15, 9]
    tokens, stats = generate(net, prompt, mode="speculative", draft_exit=3, max_new_tokens=30)
    assert tokens == generate(net, prompt, mode="exit", exit=4, max_new_tokens=30)[0]
    rejected = stats["drafted"] - stats["accepted"]
    # prompt + every committed token but the last once through all 4 layers, plus each rejected draft's layers
    assert stats["layer_evals_per_token"] * 30 <= 4 * (4 + 29) + 4 * rejected


def exact_draft_net() -> SortedLM:
    """Four layers, the last adding nothing to the residual stream: exit 3 is the full model, its drafts all pass."""
    torch.manual_seed(0)
    from transformers import LlamaConfig, LlamaForCausalLM

    lm = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2)).eval()  # fmt: skip
    with torch.no_grad():
        lm.model.layers[3].self_attn.o_proj.weight.zero_()
        lm.model.layers[3].mlp.down_proj.weight.zero_()
    return SortedLM(lm)


def test_a_round_of_d_accepted_drafts_commits_d_plus_one_tokens(monkeypatch):
    """The draft head runs only for drafts the verifier then checks (none at the verifier's own position), and a
    round whose d drafts all pass commits them plus the full model's next token."""
    net = exact_draft_net()
    heads = []
    logits = decode.LayerStack.logits
    monkeypatch.setattr(decode.LayerStack, "logits",
                        lambda self, rows, positions, exit_: heads.append((exit_, len(positions)))
                        or logits(self, rows, positions, exit_))  # fmt: skip
    tokens, stats = generate(net, [3, 14, 15, 9], mode="speculative", draft_exit=3, max_new_tokens=30)
    assert stats["acceptance"] == 1.0 and stats["drafted"] > 10
    assert sum(n for exit_, n in heads if exit_ == 3) == stats["drafted"]
    rounds = sum(1 for exit_, _ in heads if exit_ == 4) - 1  # the first token's call is not a round
    assert 1 + stats["drafted"] + rounds == 30
    assert tokens == generate(net, [3, 14, 15, 9], mode="exit", exit=4, max_new_tokens=30)[0]


def test_each_row_of_a_batch_sets_its_own_draft_count(monkeypatch):
    """Row 1's drafts always fail (its draft head is turned upside down), row 0's always pass: row 0 drafts
    more and more while row 1 falls back to a plain step and a one-token probe, and both stay lossless."""
    net = exact_draft_net()
    prompts = [[3, 14, 15, 9], [7, 2, 40, 11, 5]]
    drafts_of, rounds = {0: 0, 1: 0}, 0
    logits = decode.LayerStack.logits

    def spoiled(self, rows, positions, exit_):
        nonlocal rounds
        out = logits(self, rows, positions, exit_)
        if exit_ == 4:
            rounds += 1
        elif self.rows == 2:  # both rows still running: stack row 1 is prompt 1
            for k, row in enumerate(rows):
                drafts_of[row] += 1
                if row == 1:
                    out[k] = -out[k]
        return out

    monkeypatch.setattr(decode, "_clock", lambda: 0.0)  # never faster or slower: drafting stays on
    monkeypatch.setattr(decode.LayerStack, "logits", spoiled)
    tokens, stats = generate_batch(net, prompts, mode="speculative", draft_exit=3, max_new_tokens=40)
    assert stats["plain_steps"] == 2 and stats["plain_tokens"] == 4  # the yardstick pair of plain steps, both rows
    # row 1: one draft in its first round, then at most one every other round
    assert drafts_of[1] <= 1 + (rounds + 1) // 2 < drafts_of[0]
    monkeypatch.undo()
    assert tokens == [generate(net, p, mode="exit", exit=4, max_new_tokens=40)[0] for p in prompts]


def test_speculative_sampling_is_seeded_and_stays_in_the_full_models_support(net):
    a, _ = generate(net, PROMPT, mode="speculative", draft_exit=3, max_new_tokens=20, do_sample=True, seed=5)
    b, _ = generate(net, PROMPT, mode="speculative", draft_exit=3, max_new_tokens=20, do_sample=True, seed=5)
    assert a == b
    # with top_p tiny, sampling collapses to the full model's greedy choice at every step
    c, _ = generate(net, PROMPT, mode="speculative", draft_exit=3, max_new_tokens=20, do_sample=True, top_p=1e-6)
    assert c == hf_greedy(net, 6, 20)


def test_dynamic_with_thresholds_at_one_is_the_full_model(net):
    tokens, stats = generate(net, PROMPT, mode="dynamic", exits=[2, 4, 6], thresholds=[1.0, 1.0], max_new_tokens=30)
    assert tokens == hf_greedy(net, 6, 30) and stats["mean_exit"] == 6


def test_dynamic_early_exits_see_exact_keys_and_values(net):
    """Every token equals the argmax of its exit's logits recomputed from scratch on the whole prefix, and
    that exit is the first whose confidence reaches its threshold: the lazily filled KVs are exact."""
    exits, thresholds = [2, 4, 6], [0.5, 0.5]
    tokens, stats = generate(net, PROMPT, mode="dynamic", exits=exits, thresholds=thresholds, max_new_tokens=30)
    taken = stats["exit_per_token"]
    assert len(taken) == len(tokens) and taken[0] == 6  # token 0 comes from the prompt's pass, every layer
    assert len(set(taken)) > 1  # early exits happened, and deep tokens too
    for i, exit_taken in enumerate(taken[1:], start=1):
        with torch.no_grad():
            logits = net.exit_logits(torch.tensor([PROMPT + tokens[:i]]), None, exits)
        for e, threshold in zip(exits, [*thresholds, None], strict=True):
            confident = threshold is not None and float(torch.softmax(logits[e][0, -1], -1).max()) >= threshold
            if confident or threshold is None:
                assert e == exit_taken and int(logits[e][0, -1].argmax()) == tokens[i]
                break


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(mode="exit", exit=7), "outside [1, 6]"),
        (dict(mode="speculative", draft_exit=6), "draft_exit=6 must be in [1, 5]"),
        (dict(mode="dynamic", exits=[2, 4, 6], thresholds=[0.5]), "give 2 values in (0, 1]"),
        (dict(mode="dynamic", exits=[2, 4, 6], thresholds=[0.5, 1.5]), "give 2 values in (0, 1]"),
        (dict(mode="dynamic", exits=[2, 4], thresholds=[0.5]), "ending at 6"),
        (dict(mode="beam"), "unknown mode"),
        (dict(mode="speculative", exit=4, draft_exit=2), "always ends at the last layer"),
    ],
)
def test_bad_decoding_settings(net, kwargs, message):
    with pytest.raises(SortedNetError) as error:
        generate(net, PROMPT, max_new_tokens=4, **kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(SortedNetError, match="empty"):
        generate(net, [], max_new_tokens=4)


# ---------------------------------------------------------------- batches

PROMPTS = [PROMPT, [7, 1, 88], [4, 4, 61, 23, 19, 77, 31, 5, 12, 50, 2, 6], [42, 17, 9, 30, 8], [11]]


def hf_greedy_alone(net: SortedLM, prompt: list[int], n: int) -> list[int]:
    out = net.lm.generate(input_ids=torch.tensor([prompt]), do_sample=False, max_new_tokens=n, eos_token_id=None)
    return out[0, len(prompt) :].tolist()


def up_to(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


@pytest.fixture(scope="module")
def references(net) -> list[list[int]]:
    """Each prompt's full-model greedy continuation, decoded alone by Hugging Face generate."""
    return [hf_greedy_alone(net, p, 20) for p in PROMPTS]


@pytest.mark.parametrize(
    "mode",
    [dict(mode="exit"), dict(mode="speculative", draft_exit=1), dict(mode="speculative", draft_exit=4),
     dict(mode="dynamic", exits=[2, 4, 6], thresholds=[1.0, 1.0])],
    ids=["exit", "speculative1", "speculative4", "dynamic"],
)  # fmt: skip
@pytest.mark.parametrize("batch_size", [2, 5])
def test_batched_greedy_is_each_prompts_greedy_alone(net, references, mode, batch_size):
    """Prompts of different lengths in one batch; rows stop at an EOS that only some of them produce."""
    eos = references[0][6]  # a token row 0 makes mid-way: that row leaves the batch early, others may not
    assert any(eos not in r for r in references)
    expected = [up_to(r, eos) for r in references]
    streamed: dict[int, list[int]] = {}
    outputs = []
    for start in range(0, len(PROMPTS), batch_size):
        chunk = PROMPTS[start : start + batch_size]

        def on_token(row: int, token: int, start=start) -> None:
            streamed.setdefault(start + row, []).append(token)

        tokens, stats = generate_batch(net, chunk, max_new_tokens=20, eos_token_id=eos, on_token=on_token, **mode)
        outputs += tokens
        assert stats["tokens"] == sum(map(len, tokens))
    assert outputs == expected
    assert [streamed[i] for i in range(len(PROMPTS))] == expected


def test_batched_dynamic_rows_exit_at_different_depths_with_exact_keys_and_values(net):
    """Every token of every row equals the argmax of its exit's logits recomputed from scratch on that row's
    whole prefix, at the first exit confident enough: the lazy fill is exact per row."""
    exits, thresholds = [2, 4, 6], [0.5, 0.5]
    prompts = PROMPTS[:4]
    outputs, stats = generate_batch(net, prompts, mode="dynamic", exits=exits, thresholds=thresholds,
                                    max_new_tokens=20)  # fmt: skip
    taken = stats["exit_per_token"]
    assert [len(t) for t in taken] == [len(o) for o in outputs] == [20] * 4
    assert any(len({row[i] for row in taken}) > 1 for i in range(1, 20))  # rows at different depths in one step
    for prompt, tokens, depths in zip(prompts, outputs, taken, strict=True):
        assert depths[0] == 6
        with torch.no_grad():
            logits = net.exit_logits(torch.tensor([prompt + tokens[:-1]]), None, exits)
        for i, exit_taken in enumerate(depths[1:], start=1):
            position = len(prompt) + i - 1
            for e, threshold in zip(exits, [*thresholds, None], strict=True):
                if threshold is None or float(torch.softmax(logits[e][0, position], -1).max()) >= threshold:
                    assert e == exit_taken and int(logits[e][0, position].argmax()) == tokens[i]
                    break


# ---------------------------------------------------------------- sampling


def tiny_vocab_net(vocab_size: int = 6) -> SortedLM:
    """A random 4-layer LLaMA over a few tokens: every distribution is spread, shallow exits differ from L."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    lm = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        lm.lm_head.weight.mul_(4)  # between uniform and one-hot
    return SortedLM(lm)


def test_speculative_sampling_keeps_the_full_models_distribution():
    """4000 seeds, 3 tokens each: the joint frequencies of (t1, t2, t3) match the full model's exact joint
    probabilities (chi-square at p = 1e-4; the seeds are fixed, so the outcome is too)."""
    net, prompt, n = tiny_vocab_net(), [1, 4, 2], 4000
    outputs, stats = generate_batch(net, [prompt] * n, mode="speculative", draft_exit=1, max_new_tokens=3,
                                    do_sample=True, seed=range(n))  # fmt: skip
    assert stats["drafted"] > stats["accepted"] > 0  # drafts were both accepted and rejected
    V = net.lm.config.vocab_size
    sequences = torch.cartesian_prod(*[torch.arange(V)] * 3)
    with torch.no_grad():
        ids = torch.cat([torch.tensor([prompt]).expand(len(sequences), -1), sequences], dim=1)
        logp = torch.log_softmax(net.lm(input_ids=ids).logits.double(), -1)
    steps = torch.arange(3)
    exact = logp[:, len(prompt) - 1 + steps].gather(-1, sequences[:, :, None])[..., 0].sum(-1).exp()
    assert float(exact.sum()) == pytest.approx(1.0)
    counts = torch.zeros(len(sequences), dtype=torch.float64)
    for t in outputs:
        counts[(t[0] * V + t[1]) * V + t[2]] += 1
    expected = exact * n
    big = expected >= 5  # pool the rare cells into one
    observed = torch.cat([counts[big], counts[~big].sum()[None]])
    expected = torch.cat([expected[big], expected[~big].sum()[None]])
    chi2, df = float(((observed - expected) ** 2 / expected).sum()), len(observed) - 1
    z = 3.72  # one-sided 1e-4; Wilson-Hilferty approximation of the chi-square quantile
    assert chi2 < df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3, (chi2, df)


def test_sampled_text_depends_on_the_seed_alone(net, monkeypatch):
    """Speculative sampling gives the text plain full-model sampling gives for the same seed, whichever path
    the timed switch takes (a clock with random jumps forces both), alone or in a batch."""
    sampling = dict(do_sample=True, temperature=1.5, top_p=0.95, max_new_tokens=30)
    plain, _ = generate_batch(net, PROMPTS, mode="exit", seed=[5, 6, 7, 8, 9], **sampling)
    assert len({tuple(t) for t in plain}) == len(PROMPTS)  # real sampling, not a collapsed distribution
    jumps = torch.Generator().manual_seed(0)
    now = [0.0]

    def jumpy_clock() -> float:
        now[0] += float(torch.rand((), generator=jumps)) ** 4 * 10
        return now[0]

    monkeypatch.setattr(decode, "_clock", jumpy_clock)
    spec, stats = generate_batch(net, PROMPTS, mode="speculative", draft_exit=3, seed=[5, 6, 7, 8, 9], **sampling)
    assert spec == plain and stats["plain_steps"] > 0 and stats["drafted"] > 0
    alone, _ = generate(net, PROMPTS[2], mode="speculative", draft_exit=2, seed=7, **sampling)
    assert alone == plain[2]
    dynamic, _ = generate(net, PROMPTS[2], mode="dynamic", exits=[2, 4, 6], thresholds=[1.0, 1.0], seed=7, **sampling)
    assert dynamic == plain[2]
    other, _ = generate(net, PROMPTS[2], mode="speculative", draft_exit=3, seed=8, **sampling)
    assert other != plain[2]


# ---------------------------------------------------------------- guards


def test_a_layer_that_does_not_fill_the_cache_fails_loudly():
    """A keyword the layers no longer know vanishes into **kwargs: the decoder must say so, not decode on."""

    class DropsTheCache(torch.nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, hidden_states, cache=None, **kwargs):
            return self.layer(hidden_states, **kwargs)

    net = tiny_vocab_net()
    net.decoder.layers[2] = DropsTheCache(net.decoder.layers[2])
    for mode in (dict(mode="exit"), dict(mode="speculative", draft_exit=1)):
        with pytest.raises(SortedNetError, match="decoder layer 2 did not write its keys and values") as error:
            generate(net, [1, 2, 3], max_new_tokens=4, **mode)
        assert "\n" not in str(error.value)


def test_unsupported_attention_layers_are_refused():
    net = tiny_vocab_net()
    net.lm.config.layer_types = ["full_attention", "chunked_attention", "full_attention", "full_attention"]
    with pytest.raises(SortedNetError, match=r"layer types \['chunked_attention'\].*use mode=exit") as error:
        generate(net, [1, 2, 3], max_new_tokens=4)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("model_type", "window"),
    [
        ("mistral", dict(sliding_window=4)),
        ("qwen2", dict(use_sliding_window=True, sliding_window=4, max_window_layers=2)),
    ],
)
def test_sliding_window_models_decode_as_hugging_face_does(tmp_path, model_type, window):
    """A window shorter than the sequence: every mode gives each prompt's own greedy output, which differs
    from what the same weights give without the window (so the window is really in play)."""
    path = save_tiny(model_type, tmp_path / "windowed", num_hidden_layers=6, **window)
    lm = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        lm.lm_head.weight.mul_(30)
    net = SortedLM(lm)
    assert 4 in decode.attention_windows(lm.config, 6)
    expected = [hf_greedy_alone(net, p, 16) for p in PROMPTS[:3]]
    full_path = save_tiny(model_type, tmp_path / "full", num_hidden_layers=6)
    unwindowed = SortedLM(AutoModelForCausalLM.from_pretrained(full_path).eval())
    with torch.no_grad():
        unwindowed.lm.lm_head.weight.mul_(30)
    assert [hf_greedy_alone(unwindowed, p, 16) for p in PROMPTS[:3]] != expected
    for mode in (dict(mode="exit"), dict(mode="speculative", draft_exit=2),
                 dict(mode="dynamic", exits=[3, 6], thresholds=[1.0])):  # fmt: skip
        assert generate_batch(net, PROMPTS[:3], max_new_tokens=16, **mode)[0] == expected, mode


# ---------------------------------------------------------------- never the slower choice


def count_heads(monkeypatch) -> list[tuple[int, int]]:
    """(exit, positions) of every head the decoder computes from now on."""
    heads = []
    logits = decode.LayerStack.logits
    monkeypatch.setattr(decode.LayerStack, "logits",
                        lambda self, rows, positions, exit_: heads.append((exit_, len(positions)))
                        or logits(self, rows, positions, exit_))  # fmt: skip
    return heads


def wrong_draft_net() -> SortedLM:
    """exact_draft_net with exit 3's own head negated: every draft is the full model's least likely token."""
    net = exact_draft_net()
    net.add_exit_heads([3])
    with torch.no_grad():
        net.exit_heads["3"].weight.neg_()
    return net


def test_drafts_that_never_pass_switch_drafting_off_with_a_doubling_pause(monkeypatch):
    """Acceptance 0 and a clock that never calls drafting slower: the counts alone end each probe after one
    round of one draft, and the pauses between probes double (16, 32, 64 plain steps), lossless throughout."""
    net, prompt = wrong_draft_net(), [3, 14, 15, 9]
    expected = generate(net, prompt, mode="exit", max_new_tokens=100)[0]
    monkeypatch.setattr(decode, "_clock", lambda: 0.0)
    heads = count_heads(monkeypatch)
    tokens, stats = generate(net, prompt, mode="speculative", draft_exit=3, max_new_tokens=100)
    assert tokens == expected
    # token 1 from the prompt; a probe at 2, 16 plain steps, a probe at 19, 32 plain, a probe at 52, 48 plain
    assert sum(n for exit_, n in heads if exit_ == 3) == stats["drafted"] == 3
    assert (stats["probes"], stats["accepted"], stats["plain_steps"]) == (3, 0, 96)


def test_a_batch_whose_drafts_never_pass_probes_once_per_pause(monkeypatch):
    net, prompts = wrong_draft_net(), [[3, 14, 15, 9], [7, 2, 40, 11, 5]]
    monkeypatch.setattr(decode, "_clock", lambda: 0.0)
    tokens, stats = generate_batch(net, prompts, mode="speculative", draft_exit=3, max_new_tokens=40)
    assert (stats["drafted"], stats["plain_steps"], stats["plain_tokens"]) == (4, 37, 74)
    assert stats["probes"] == 2  # one draft per row each time
    monkeypatch.undo()
    assert tokens == [generate(net, p, mode="exit", max_new_tokens=40)[0] for p in prompts]


def test_decode_all_carries_the_switch_from_batch_to_batch(monkeypatch):
    """The second prompt starts inside the pause the first one's losing probes set: it drafts nothing."""
    net, prompts = wrong_draft_net(), [[3, 14, 15, 9], [7, 2, 40, 11, 5]]
    monkeypatch.setattr(decode, "_clock", lambda: 0.0)
    outputs, stats = decode.decode_all(net, prompts, 20, None, mode="speculative", draft_exit=3)
    assert [s["drafted"] for s in stats] == [2, 0] and [s["probes"] for s in stats] == [2, 0]
    assert outputs == [generate(net, p, mode="exit", max_new_tokens=20)[0] for p in prompts]


def test_a_draft_exit_that_cannot_pay_is_retired(monkeypatch):
    """With the evidence threshold at one judged position, the first losing probe of a draft at 3 of 4 layers
    that never passes (ceiling: (1 + 1/3) / (1 + 0.75) < 1) retires it: no further probe, plain to the end,
    lossless."""
    net, prompt = wrong_draft_net(), [3, 14, 15, 9]
    expected = generate(net, prompt, mode="exit", max_new_tokens=100)[0]
    monkeypatch.setattr(decode, "_clock", lambda: 0.0)
    monkeypatch.setattr(decode.DraftSwitch, "MIN_EVIDENCE", 1)
    tokens, stats = generate(net, prompt, mode="speculative", draft_exit=3, max_new_tokens=100)
    assert tokens == expected
    assert (stats["probes"], stats["drafted"], stats["plain_steps"], stats["retired"]) == (1, 1, 98, True)


@pytest.mark.parametrize(
    ("cost", "accepted", "rejected", "below_one", "retired"),
    [
        (0.7, 5, 15, True, True),  # an exit at 70% of the depth that passes a quarter of its drafts: cannot pay
        (0.1, 5, 15, False, False),  # the same acceptance from an exit at 10% of the depth: it can
        (0.7, 190, 10, False, False),  # 95% acceptance pays even at 70% of the depth
        (0.7, 2, 6, True, False),  # too little evidence (8 positions) to retire anything
    ],
)
def test_the_switch_retires_a_draft_only_when_its_ceiling_is_below_one(cost, accepted, rejected, below_one, retired):
    switch = decode.DraftSwitch(cost)
    switch.plain_step(1.0, 1)  # the yardstick: 1 s per token
    switch.round(10.0, 1, accepted + rejected, accepted, rejected)  # one slow round, judged after 4
    for _ in range(3):
        switch.round(10.0, 1, 0, 0, 0)
    assert switch.pause > 0 and switch.retired is retired and (switch.ceiling() < 1) is below_one
    for _ in range(2 * switch.MAX_PAUSE):
        switch.plain_step(1.0, 1)
    assert switch.drafting is not retired


def test_drafting_that_is_timed_slower_than_plain_steps_stops(monkeypatch):
    """Every draft passes, but each round takes far longer than a plain step: after its first judgement (with
    the two yardstick plain steps before it) each stretch is judged slower and ends, lossless throughout."""
    net, prompt = exact_draft_net(), [3, 14, 15, 9]
    now = [0.0]
    round_ = decode._speculative_round

    def slow_round(*args, **kwargs):
        now[0] += 1000.0
        return round_(*args, **kwargs)

    monkeypatch.setattr(decode, "_clock", lambda: now[0])
    monkeypatch.setattr(decode, "_speculative_round", slow_round)
    tokens, stats = generate(net, prompt, mode="speculative", draft_exit=3, max_new_tokens=60)
    assert stats["acceptance"] == 1.0
    # 4 rounds (1..4 drafts: 14 tokens), 2 yardstick steps, 4 rounds (judged slower), 16 plain steps, then the
    # third probe's 4 rounds end the answer (1 + 14 + 2 + 14 + 16 + 13 = 60)
    assert (stats["probes"], stats["plain_steps"]) == (3, 18)
    monkeypatch.undo()
    assert tokens == generate(net, prompt, mode="exit", max_new_tokens=60)[0]


def test_dynamic_never_computes_the_head_of_an_exit_at_one(net, monkeypatch):
    heads = count_heads(monkeypatch)
    tokens, stats = generate(net, PROMPT, mode="dynamic", exits=[2, 4, 6], thresholds=[1.0, 1.0], max_new_tokens=20)
    assert tokens == hf_greedy(net, 6, 20) and stats["exit_per_token"] == [6] * 20
    assert {exit_ for exit_, _ in heads} == {6} and len(heads) == 20  # plain decoding: one head per token
    heads.clear()
    some, _ = generate(net, PROMPT, mode="dynamic", exits=[2, 4, 6], thresholds=[1.0, 0.5], max_new_tokens=20)
    assert 2 not in {exit_ for exit_, _ in heads}
    assert some == generate(net, PROMPT, mode="dynamic", exits=[4, 6], thresholds=[0.5], max_new_tokens=20)[0]


def confident_net(num_layers: int, vocab_size: int = 545) -> SortedLM:
    """A random LLaMA (the embedded tokenizer's vocabulary) whose head is sharpened: every exit is confident."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=num_layers, num_attention_heads=4,
                                      num_key_value_heads=2)).eval()  # fmt: skip
    with torch.no_grad():
        lm.lm_head.weight.mul_(200)
    return SortedLM(lm)


def test_unpaying_exits_weighs_skipped_layers_against_the_head():
    """8 layers of 10,240 matmul weights, heads of 32 x 545 = 17,440: an exit pays when the tokens it takes skip
    more layer weights than the heads of all the tokens that reach it."""
    from sortednet.inference.calibrate import unpaying_exits

    net = confident_net(8)
    every = [[8] + [2] * 10]  # exit 2 takes every token: 6 layers (61,440) saved per head
    assert unpaying_exits(net, [2, 8], [0.5], every) == []
    assert unpaying_exits(net, [2, 6, 8], [0.5, 0.5], every) == [6]  # 4 layers to exit 6: 2 pays; 6 takes nothing
    assert unpaying_exits(net, [2, 7, 8], [1.0, 0.5], [[8] + [7] * 10]) == [7]  # one layer never pays a head
    assert unpaying_exits(net, [4, 8], [0.5], [[8] + [4, 8] * 6]) == []  # 6 x 40,960 > 12 x 17,440
    assert unpaying_exits(net, [4, 8], [0.5], [[8] + [4, 8, 8] * 4]) == [4]  # 4 x 40,960 < 12 x 17,440


def test_calibration_turns_off_exits_whose_head_never_pays(tokenizer, monkeypatch):
    """4 layers, exits {3, 4}: exit 3 saves one layer (10,240 weights) per token it takes, less than its head
    (17,440) even when it takes every token; so calibration turns early exit off, whatever the quality budget,
    and dynamic decoding with its thresholds computes no head below L."""
    from sortednet.inference.calibrate import calibrate

    net = confident_net(4)
    prompts, references = [[5, 17, 99, 3], [8, 40, 2], [300, 12, 77, 91, 6]], ["a", "b", "c"]
    thresholds, table = calibrate(net, tokenizer, prompts, references, [3, 4], max_drop=1.0, max_new_tokens=8)
    assert thresholds == [1.0] and table[-1]["threshold"] == 0.5 and table[-1]["mean_exit"] < 4  # exit 3 fired
    heads = count_heads(monkeypatch)
    tokens, _ = generate_batch(net, prompts, mode="dynamic", exits=[3, 4], thresholds=thresholds, max_new_tokens=8)
    assert {exit_ for exit_, _ in heads} == {4}
    assert tokens == [hf_greedy_alone(net, p, 8) for p in prompts]


def test_calibration_keeps_an_exit_that_pays(tokenizer):
    """8 layers, exits {1, 8}: exit 1 takes most tokens and skips 7 layers each time; it stays."""
    from sortednet.inference.calibrate import calibrate

    net = confident_net(8)
    prompts, references = [[5, 17, 99, 3], [8, 40, 2]], ["a", "b"]
    thresholds, table = calibrate(net, tokenizer, prompts, references, [1, 8], max_drop=1.0, max_new_tokens=8)
    assert thresholds == [0.5] and table[-1]["exits"] == [1]
