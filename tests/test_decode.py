"""Decoding with exits: exit-K, lossless self-speculative, per-token dynamic exit with exact lazy KVs."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import save_tiny
from sortednet.errors import SortedNetError
from sortednet.inference.decode import generate
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
