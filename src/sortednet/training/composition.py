"""The training config as Hydra composes it from the package's ``conf/``, for commands that need it before (or
without) a run: ``train`` checks its command line with it, ``plan`` plans from it.

Importing this module registers the schema (``train_schema``, :class:`~sortednet.config.TrainConfig`) and the
``--help`` template that ``conf/train.yaml`` names.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, OmegaConfBaseException, ValidationError

from sortednet import cli
from sortednet.config import TrainConfig
from sortednet.errors import SortedNetError

CONF = Path(__file__).parents[1] / "conf"  # the package's own configs (the repo's top-level conf/ links here)
SWEEP_FLAGS = ("-m", "--multirun")


def _help_template() -> str:
    """``--help``: Hydra's groups and composed config, with every key's type, default and docstring between."""
    keys = cli.describe(TrainConfig).replace("${", "\\${")  # a docstring is text, not an interpolation
    return "\n".join([
        "`python -m sortednet.train [overrides]`: fine-tune with SoFT, SFT, ICT or extracted, then report per exit.",
        "",
        "== Configuration groups ==", "Compose your configuration from those groups (group=option)", "",
        "$APP_CONFIG_GROUPS", "",
        "== Keys ==", "Each key's type, schema default and meaning (the values a run uses: == Config ==)", "",
        keys, "",
        "== Config ==", "The config these arguments compose; override anything in it (foo.bar=value)", "",
        "$CONFIG", "",
    ])  # fmt: skip


ConfigStore.instance().store(name="train_schema", node=TrainConfig)
ConfigStore.instance().store(group="hydra/help", name="sortednet", node={"template": _help_template()})


def training_options() -> dict[str, list[str]]:
    """The training config groups (``experiment``, ``objective``, ...) and their options, from the package's configs."""
    found = {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in sorted(CONF.iterdir()) if d.is_dir()}
    return {name: options for name, options in found.items() if options and name != "hydra"}


def compose(overrides: list[str]) -> TrainConfig:
    """The typed training config of ``overrides`` (no run directory: ``run_dir`` is a placeholder)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("train", overrides=["run_dir=/tmp/unused", *overrides])
    return OmegaConf.to_object(cfg)


def compose_checked(overrides: list[str], command: str) -> TrainConfig:
    """:func:`compose`, with Hydra's and OmegaConf's refusals as one-line errors that name the key (and, for an
    unknown key, the closest known ones); ``command`` is the one whose ``--help`` lists the keys."""
    try:
        return compose(overrides)
    except (HydraException, OmegaConfBaseException) as error:
        cause, lines = error.__cause__, str(error).split("\nConfig search path")[0].splitlines()
        key = getattr(cause, "full_key", None)
        keys = cli.config_keys(TrainConfig)
        if isinstance(cause, ValidationError) and key in keys:
            text = next((o.partition("=")[2] for o in overrides if o.partition("=")[0].lstrip("+~") == key), "")
            raise cli.wrong_type(key, text, keys[key].type) from error
        message = " ".join(line.strip() for line in lines if "To append" not in line).rstrip(".")
        if isinstance(cause, ConfigAttributeError) and key:
            known = [*keys, *training_options(), *_group_keys(key)]
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            message += ": not a training setting" + (f"; did you mean {' or '.join(close)}?" if close else "")
        raise SortedNetError(f"{message}; python -m {command} --help lists the training keys") from error


def _group_keys(key: str) -> list[str]:
    """The keys the options of ``key``'s group set (``trainer.max_epochs``, ...): open dicts the schema does not list,
    so a typo of one is suggested from here."""
    group = key.split(".")[0]
    path = CONF / group
    if not path.is_dir():
        return []
    return sorted({f"{group}.{k}" for option in path.glob("*.yaml") for k in OmegaConf.load(option) or {}})


def check_command_line(argv: list[str]) -> None:
    """Compose what a training command line asks for (a sweep: its first job) and raise its refusal as one line,
    before Hydra runs, starts a sweep or writes anything. Hydra's own flags (``--help``, ``--cfg``,
    ``--config-dir``, ...) and a ``hydra.searchpath`` leave the whole check to Hydra; other ``hydra.*`` overrides
    are Hydra's alone."""
    if any(a.startswith("-") and a not in SWEEP_FLAGS for a in argv):
        return
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in argv if a not in SWEEP_FLAGS])
    except HydraException as error:
        raise SortedNetError(f"{' '.join(str(error).split())}; write overrides as key=value") from error
    if any(o.key_or_group.startswith("hydra.searchpath") for o in parsed):
        return  # the user's own config directories: what they add is Hydra's to find
    first = [
        f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else o.input_line
        for o in parsed
        if not o.key_or_group.startswith("hydra")
    ]
    compose_checked(first, "sortednet.train")
