"""The exit convention: exit e is layers 1..e + the shared norm and head; exit L is the model itself."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import save_tiny
from sortednet.errors import SortedNetError
from sortednet.model import SortedLM, resolve_exits, truncate_layers_, validate_exits


def _batch(vocab: int = 101):
    ids = torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # a padded row
    return ids, mask


def test_last_exit_reproduces_model_logits(tiny_model_dir):
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids, mask = _batch()
    expected = lm(input_ids=ids, attention_mask=mask).logits
    logits = SortedLM(lm).exit_logits(ids, mask, [4])[4]
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("exit_", [1, 2, 3])
def test_intermediate_exit_equals_truncated_model(tiny_model_dir, exit_):
    """An independent route to sub-model e: cut the model to e layers and run its own forward."""
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids, mask = _batch()
    truncated = truncate_layers_(copy.deepcopy(lm), exit_)
    expected = truncated(input_ids=ids, attention_mask=mask).logits
    logits = SortedLM(lm).exit_logits(ids, mask, [exit_, 4])[exit_]
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(logits, lm(input_ids=ids, attention_mask=mask).logits)


def test_generation_at_exit_matches_stepwise_argmax(tmp_path):
    lm = AutoModelForCausalLM.from_pretrained(save_tiny("llama", tmp_path / "m")).eval()
    net = SortedLM(lm)
    prompt = torch.tensor([[5, 17, 42, 8, 99]])
    for exit_ in (2, 4):
        with net.at_exit(exit_) as sub:
            out = sub.generate(input_ids=prompt, do_sample=False, max_new_tokens=6, pad_token_id=0, eos_token_id=None)
        ids = prompt
        for _ in range(6):  # no cache, full recompute through the exit
            next_id = net.exit_logits(ids, None, [exit_])[exit_][:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
        assert out.tolist() == ids.tolist()
    # the context manager put the full model back
    assert len(lm.model.layers) == 4 and lm.config.num_hidden_layers == 4
    assert net.head(2) is lm.lm_head


def test_exit_heads_are_untied_copies_even_with_tied_embeddings(tmp_path):
    lm = AutoModelForCausalLM.from_pretrained(save_tiny("llama", tmp_path / "m", tie_word_embeddings=True))
    net = SortedLM(lm)
    assert lm.lm_head.weight is lm.model.embed_tokens.weight
    net.add_exit_heads([2, 4])
    assert sorted(net.exit_heads) == ["2"]  # exit L keeps the model's head
    head = net.head(2)
    assert head.weight.data_ptr() != lm.lm_head.weight.data_ptr()
    torch.testing.assert_close(head.weight, lm.lm_head.weight)
    with torch.no_grad():
        head.weight.add_(1.0)
    assert not torch.equal(head.weight, lm.model.embed_tokens.weight)
    assert net.head(4) is lm.lm_head


@pytest.mark.parametrize(
    ("exits", "message"),
    [
        ([2, 4, 9], "outside [1, 8]"),
        ([0, 8], "outside [1, 8]"),
        ([4, 2, 8], "not sorted"),
        ([2, 2, 8], "duplicates"),
        ([2, 4], "do not contain the last layer 8"),
        ([], "empty"),
    ],
)
def test_bad_exit_sets_are_one_line_errors(exits, message):
    with pytest.raises(SortedNetError) as error:
        validate_exits(exits, 8)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_named_exit_sets():
    assert resolve_exits("every_2", 8) == [2, 4, 6, 8]
    assert resolve_exits("every_3", 8) == [3, 6, 8]
    assert resolve_exits("all", 3) == [1, 2, 3]
    assert resolve_exits("last", 40) == [40]
    assert resolve_exits("paper", 40) == [12, 16, 20, 24, 28, 32, 36, 40]
    assert resolve_exits([4, 8], 8) == [4, 8]
    for bad in ("paper", "every_x", "middle"):
        with pytest.raises(SortedNetError):
            resolve_exits(bad, 8)


def test_unsupported_architecture_is_a_clear_error():
    with pytest.raises(SortedNetError, match="LLaMA-family"):
        SortedLM(torch.nn.Linear(2, 2))
