"""Every numeric training setting declares its range in the typed config (sortednet.config), and a value outside it
stops `python -m sortednet.train` with one line and status 2, before Hydra runs or any run directory exists."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import compose_train, one_line_error, run_module, train_in_process
from sortednet.config import Range, TrainConfig, check_ranges
from sortednet.errors import SortedNetError

NUMERIC = {"int", "float", "int | None", "float | None"}


def _settings(config, prefix: str = "") -> list[tuple[str, str, dataclasses.Field]]:
    """(key, annotation, field) of every leaf setting of a config, nested groups walked into."""
    found = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            found += _settings(value, f"{prefix}{f.name}.")
        else:
            found.append((f"{prefix}{f.name}", str(f.type), f))
    return found


def _ranges() -> list[tuple[str, Range, bool]]:
    """Every declared range: the numeric fields' own and the checked keys of mapping fields (trainer, optimizer),
    the latter marked (their values are untyped, so a fraction reaches the range check)."""
    ranges = []
    for key, _, f in _settings(TrainConfig()):
        if "range" in f.metadata:
            ranges.append((key, f.metadata["range"], False))
        ranges += [(f"{key}.{name}", within, True) for name, within in f.metadata.get("entries", {}).items()]
    return ranges


def _outside(within: Range, untyped: bool) -> list[float]:
    """Values just outside a range: below it, above it, and (untyped keys) a fraction where only whole numbers go;
    a fraction for a typed int is OmegaConf's type error, tested in test_commands."""
    values = []
    if within.low is not None:
        values.append(within.low if within.low_open else within.low - 1)
    if within.high is not None:
        values.append(within.high if within.high_open else within.high + 1)
    if within.whole and untyped:
        values.append((within.low if within.low is not None else 0) + 1.5)
    return [int(v) if float(v).is_integer() else v for v in values if v not in within.also]


RANGES = _ranges()
CASES = [(key, value) for key, within, untyped in RANGES for value in _outside(within, untyped)]


def _override(key: str, value: float) -> str:
    """``key=value``, appended (``+key=value``) where the default config's trainer or optimizer lacks the key."""
    group, _, name = key.partition(".")
    if group in ("trainer", "optimizer") and name not in (getattr(compose_train(), group) or {}):
        return f"+{key}={value}"
    return f"{key}={value}"


def test_every_numeric_setting_declares_its_range():
    undeclared = [key for key, kind, f in _settings(TrainConfig()) if kind in NUMERIC and "range" not in f.metadata]
    assert undeclared == []
    keys = {key for key, _, _ in RANGES}
    assert {"seed", "loss.ramp_fraction", "data.batch_size", "data.val_size", "data.max_length"} <= keys
    assert {"optimizer.lr", "trainer.max_steps", "trainer.devices"} <= keys


def test_the_defaults_and_every_experiment_are_in_range():
    check_ranges(TrainConfig())
    assert compose_train("experiment=soft_13b").seed == 42  # composing builds the dataclass, which checks itself


@pytest.mark.parametrize(("key", "value"), CASES, ids=[f"{k}={v}" for k, v in CASES])
def test_a_value_out_of_range_is_one_line_before_any_run(tmp_path, capsys, key, value):
    code, err = train_in_process([f"hydra.run.dir={tmp_path / 'run'}", _override(key, value)], capsys)
    line = one_line_error(code, err, f"{key}=", "must be", "set e.g.")
    assert str(value) in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=-1", "seed=-1 must be a whole number in [0, 4294967295]; set e.g. seed=42"),
        (
            "loss.ramp_fraction=1.5",
            "loss.ramp_fraction=1.5 must be a number in (0, 1]; set e.g. loss.ramp_fraction=0.5",
        ),
        ("trainer.max_epochs=abc", "trainer.max_epochs='abc' must be a whole number >= 1 or -1"),
    ],
)
def test_the_message_names_the_range_and_a_value_that_fits(override, message):
    with pytest.raises(SortedNetError) as error:
        compose_train(override)
    assert str(error.value) == message or str(error.value).startswith(message + ";")


def test_devices_given_by_name_or_list_are_left_to_lightning():
    assert compose_train("trainer.devices=auto").trainer["devices"] == "auto"
    assert compose_train("trainer.devices=[0,1]").trainer["devices"] == [0, 1]


def test_the_real_command_refuses_a_negative_seed_in_one_line(tmp_path):
    process = run_module("sortednet.train", "seed=-1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    one_line_error(process.returncode, process.stderr, "seed=-1 must be a whole number in [0, 4294967295]")
    assert not (tmp_path / "run").exists()
