"""sortednet as an installed package: the wheel carries its Hydra configs and py.typed, and the train command
composes from any directory, extended the Hydra way with a user's own config directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from this checkout, installed (without dependencies: they are this venv's) into a
    directory outside the checkout."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True, timeout=TIMEOUT_S, capture_output=True,
    )  # fmt: skip
    (wheel,) = out.glob("sortednet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sortednet/py.typed" in names
    assert {"sortednet/conf/train.yaml", "sortednet/conf/experiment/soft_13b.yaml"} <= set(names)
    target = out / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True, timeout=TIMEOUT_S, capture_output=True,
    )  # fmt: skip
    return target


def _train_cfg(installed: Path, cwd: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(installed)}
    process = subprocess.run(
        [sys.executable, "-m", "sortednet.train", *args, "--cfg", "job"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-2000:]
    return process.stdout


def test_the_installed_package_composes_its_configs_from_another_directory(installed, tmp_path):
    probe = subprocess.run(
        [sys.executable, "-c", "import sortednet; print(sortednet.__file__)"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(installed)}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert probe.stdout.startswith(str(installed))  # the installed copy, not this checkout
    default = _train_cfg(installed, tmp_path)
    assert "name_or_path: embedded" in default and "name: soft" in default
    paper = _train_cfg(installed, tmp_path, "experiment=soft_13b")
    assert "exits: paper" in paper and "global_batch_size: 128" in paper and "num_hidden_layers: 40" in paper


def test_a_users_config_directory_adds_a_model(installed, tmp_path):
    user = tmp_path / "my_conf"
    (user / "model").mkdir(parents=True)
    (user / "model" / "mine.yaml").write_text("name_or_path: /models/my-llama\ndtype: bfloat16\n")
    mine = _train_cfg(installed, tmp_path, "--config-dir", str(user), "model=mine")
    assert "name_or_path: /models/my-llama" in mine and "dtype: bfloat16" in mine
