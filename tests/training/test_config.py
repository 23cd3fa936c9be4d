"""Every experiment composes, validates and instantiates; large models are built on the meta device."""

from __future__ import annotations

import inspect

import lightning as L
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from conftest import CONF, compose_train
from sortednet.hub import causal_lm_from_config
from sortednet.objectives import apply_objective
from sortednet.training.datamodule import AlpacaDataModule
from sortednet.training.module import build_module

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
PAPER_EXPERIMENTS = [name for name in EXPERIMENTS if not name.startswith("smollm2")]
SMOLLM2_EXPERIMENTS = [name for name in EXPERIMENTS if name.startswith("smollm2")]
# Parameter counts of the released checkpoints (Llama 2 paper / model cards: 6.74B and 13.0B).
PARAMS = {"meta-llama/Llama-2-13b-hf": 13_015_864_320, "meta-llama/Llama-2-7b-hf": 6_738_415_616}


def test_the_paper_experiments_exist():
    assert {"soft_13b", "sft_13b", "ict_13b", "soft_7b"} <= set(EXPERIMENTS)


def _module_on_meta(cfg):
    """The run's module as train builds it, over the model's architecture on the meta device (no weights)."""
    causal_lm = causal_lm_from_config(cfg.model.architecture, cfg.model.dtype, device="meta")
    net, exits = apply_objective(causal_lm, cfg.objective, cfg.exits, cfg.model.lora)
    return build_module(cfg, net, exits, instantiate(cfg.optimizer))


@pytest.mark.parametrize("name", PAPER_EXPERIMENTS)
def test_experiment_composes_and_instantiates_on_meta(name, tokenizer):
    cfg = compose_train(f"experiment={name}", "objective.init_from=/ckpt/of/sft/last.ckpt")
    assert cfg.seed == 42 and cfg.optimizer["lr"] == 2e-5 and cfg.trainer["precision"] == "bf16-mixed"
    assert cfg.strategy.name == "fsdp" and cfg.data.global_batch_size == 128  # 4 x 8 GPUs x 4 accumulation
    module = _module_on_meta(cfg)
    assert sum(p.numel() for p in module.net.lm.parameters()) == PARAMS[cfg.model.name_or_path]
    heads = module.net.exit_heads
    extra = sum(p.numel() for p in heads.parameters()) if heads is not None else 0
    layers = cfg.model.architecture["num_hidden_layers"]
    assert module.eval_exits[-1] == layers
    if cfg.model.name_or_path.endswith("13b-hf"):
        assert module.eval_exits == [12, 16, 20, 24, 28, 32, 36, 40]
    expected_train = {"soft": module.eval_exits, "sft": [layers], "ict": module.eval_exits[:-1]}
    assert module.train_exits == expected_train[cfg.objective.name]
    if cfg.objective.name == "ict":  # 7 new heads of 5120 x 32000, nothing else trainable
        assert extra == 7 * 5120 * 32000
        assert {n.split(".")[0] for n, p in module.named_parameters() if p.requires_grad} == {"net"}
        assert all("exit_heads" in n for n, p in module.named_parameters() if p.requires_grad)
    optimizer = module.optimizer_factory([p for p in module.parameters() if p.requires_grad])
    assert optimizer.defaults["lr"] == 2e-5
    AlpacaDataModule(cfg.data, tokenizer, "/tmp/unused")
    # every trainer key is Lightning's, but for sortednet's own `compile` (taken out before the Trainer is built)
    assert set(cfg.trainer) - {"compile"} <= set(inspect.signature(L.Trainer).parameters)


@pytest.mark.parametrize("name", SMOLLM2_EXPERIMENTS)
def test_smollm2_experiment_composes_and_instantiates_on_meta(name):
    """The real-model recipe's runs (docs/smollm2_recipe.md): SmolLM2-135M's shape, the paper's relative exit set."""
    cfg = compose_train(f"experiment={name}", "objective.init_from=/ckpt/of/sft/last.ckpt")
    assert cfg.model.name_or_path.endswith("/smollm2/hf") and cfg.data.path.endswith("/smollm2/data/train.json")
    assert cfg.seed == 42 and cfg.optimizer["lr"] == 1e-4 and cfg.data.prompt_style == "chat"
    module = _module_on_meta(cfg)
    if name == "smollm2_extracted":
        assert module.eval_exits == module.train_exits == [18] and module.net.num_layers == 18
        return
    assert sum(p.numel() for p in module.net.lm.parameters()) == 134_515_008  # SmolLM2-135M-Instruct
    assert module.eval_exits == [9, 12, 15, 18, 21, 24, 27, 30]
    expected = {"smollm2_sft": [30], "smollm2_ict": module.eval_exits[:-1]}.get(name, module.eval_exits)
    assert module.train_exits == expected
    long = name == "smollm2_long"
    assert cfg.trainer["max_steps"] == (600 if long else 40)  # the epoch: 4,752 rows / 8
    assert cfg.trainer["precision"] == ("bf16-mixed" if long else "32-true")


def test_default_config_is_the_embedded_soft_run():
    cfg = compose_train()
    assert (cfg.model.name_or_path, cfg.data.path, cfg.objective.name, cfg.exits) == (
        "embedded",
        "embedded",
        "soft",
        "every_2",
    )
    assert cfg.logger["kind"] == "wandb" and cfg.trainer["accelerator"] == "cpu"


@pytest.mark.parametrize("objective", ["soft", "sft", "ict", "extracted"])
def test_objective_group(objective):
    assert compose_train(f"objective={objective}").objective.name == objective


@pytest.mark.parametrize("loss", ["mean", "depth", "sampled", "rotational", "gradual"])
def test_loss_group(loss):
    cfg = compose_train(f"loss={loss}")
    assert cfg.loss.weights in ("uniform", "depth")
    default = compose_train().loss  # the paper's mean
    assert default.curriculum == "none" and default.sample is None


@pytest.mark.parametrize(
    "override", ["no_such_key=1", "data.no_such_key=1", "data.max_length=lots", "model=no_such_model"]
)
def test_unknown_or_mistyped_keys_fail_at_composition(override):
    with pytest.raises(ConfigCompositionException):
        compose_train(override)


def test_exit_sets_sweep_as_explicit_lists():
    """`-m 'exits=[4,8],[2,4,6,8]'` is a sweep over two lists, not a group selection."""
    (override,) = OverridesParser.create().parse_overrides(["exits=[4,8],[2,4,6,8]"])
    assert override.is_sweep_override()
    assert list(override.sweep_iterator()) == [[4, 8], [2, 4, 6, 8]]
    assert compose_train("exits=[4,8]").exits == [4, 8]


@pytest.mark.parametrize("strategy", ["single", "ddp", "fsdp"])
def test_strategy_group(strategy):
    assert compose_train(f"strategy={strategy}").strategy.name == strategy
    assert compose_train().strategy.name == "single"


def test_paper_batch_gives_four_accumulation_steps_on_eight_gpus():
    from lightning.pytorch.strategies import ModelParallelStrategy

    from sortednet.training.strategy import configure_strategy

    trainer = configure_strategy(compose_train("experiment=soft_13b"))
    assert trainer["accumulate_grad_batches"] == 4 and trainer["precision"] == "32-true"  # FSDP2 policy casts
    assert isinstance(trainer["strategy"], ModelParallelStrategy)  # sortednet's atomic-checkpoint subclass
