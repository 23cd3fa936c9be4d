"""Loss variants: which exits a step trains, with which weights — shown by the gradients they receive."""

from __future__ import annotations

import pytest
import torch

from conftest import save_tiny, sorted_module
from sortednet.config import LossConfig, ModelConfig, ObjectiveConfig
from sortednet.errors import SortedNetError
from sortednet.schedule import ExitSchedule

EXITS = [1, 2, 3, 4]

# (loss config, steps of training, the exits each of the first steps must train)
VARIANTS = {
    "mean": (LossConfig(), 8, [[1, 2, 3, 4]] * 4),
    "rotational": (LossConfig(sample=2, curriculum="rotational"), 8, [[1, 4], [2, 4], [3, 4], [1, 4], [2, 4]]),
    "rotational-3": (LossConfig(sample=3, curriculum="rotational"), 8, [[1, 2, 4], [3, 1, 4], [2, 3, 4]]),
    # ramp = 0.5 x 12 = 6 steps for 3 shallower exits: one more every 2 steps, deepest first
    "gradual": (LossConfig(curriculum="gradual"), 12, [[4], [4], [3, 4], [3, 4], [2, 3, 4], [2, 3, 4], EXITS, EXITS]),
}


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    """A SoFT module whose exits each get their own (untied) head, so each exit's gradient is visible."""
    path = save_tiny("llama", tmp_path_factory.mktemp("m"))
    module = sorted_module(ModelConfig(name_or_path=str(path)), ObjectiveConfig("soft"), exits=EXITS)
    module.net.add_exit_heads(EXITS)
    return module


def _batch():
    ids = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :5] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _exits_with_gradient(module, step: int) -> list[int]:
    module.zero_grad(set_to_none=True)
    loss, losses = module.training_loss(_batch(), step)
    loss.backward()
    with_grad = [e for e in EXITS if module.net.head(e).weight.grad.abs().sum() > 0]
    assert sorted(losses) == with_grad  # the logged per-exit losses are exactly the trained exits
    # heads left out still have a (zero) gradient: no unused parameters under DDP/FSDP
    assert all(module.net.head(e).weight.grad is not None for e in EXITS)
    return with_grad


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_trains_the_expected_exits_at_each_step(module, name):
    config, total, expected = VARIANTS[name]
    module.loss_config = config
    module.schedule = ExitSchedule(module.train_exits, config, total_steps=total)
    assert [_exits_with_gradient(module, step) for step in range(len(expected))] == [sorted(s) for s in expected]


def test_sampled_exits_are_seeded_and_always_include_the_deepest(module):
    config = LossConfig(sample=2, seed=7)
    schedule = ExitSchedule(EXITS, config)
    sets = [schedule.active(step) for step in range(40)]
    assert all(len(s) == 2 and s[-1] == 4 for s in sets)
    assert {s[0] for s in sets} == {1, 2, 3}  # every shallower exit gets its turn
    assert sets == [ExitSchedule(EXITS, config).active(step) for step in range(40)]  # same on every rank
    assert sets != [ExitSchedule(EXITS, LossConfig(sample=2, seed=8)).active(step) for step in range(40)]
    module.loss_config, module.schedule = config, schedule
    for step in range(3):
        assert _exits_with_gradient(module, step) == sets[step]


@pytest.mark.parametrize(
    ("weights", "expected"), [("uniform", [1, 1, 1, 1]), ("depth", [1, 2, 3, 4]), ([4, 0, 1, 1], [4, 0, 1, 1])]
)
def test_exit_weights_scale_each_exits_gradient(module, weights, expected):
    """With weight w_e / sum(w), exit e's head gradient is exactly that share of its unweighted gradient."""
    batch = _batch()

    def head_grads(config):
        module.schedule = ExitSchedule(EXITS, config)
        module.zero_grad(set_to_none=True)
        module.training_loss(batch, 0)[0].backward()
        return [module.net.head(e).weight.grad.clone() for e in EXITS]

    only = [head_grads(LossConfig(weights=[float(i == j) for j in range(4)]))[i] for i in range(4)]
    weighted = head_grads(LossConfig(weights=weights))
    for e, w in enumerate(expected):
        torch.testing.assert_close(weighted[e], only[e] * w / sum(expected), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (LossConfig(sample=5), "between 1 and the 4 exits"),
        (LossConfig(sample=0), "between 1 and the 4 exits"),
        (LossConfig(weights=[1, 2]), "give 4 non-negative numbers"),
        (LossConfig(weights="deep"), "unknown loss.weights"),
        (LossConfig(curriculum="spiral"), "unknown loss.curriculum"),
    ],
)
def test_bad_loss_settings_are_one_line_errors(config, message):
    with pytest.raises(SortedNetError, match=message):
        ExitSchedule(EXITS, config)
