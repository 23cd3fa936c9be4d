"""experiments/speculation_ceiling.py: the least acceptance that reaches a speed-up under its cost model."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "experiments" / "speculation_ceiling.py"
spec = importlib.util.spec_from_file_location("speculation_ceiling", SCRIPT)
ceiling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ceiling)


def speedup(per_layer: float, fixed: float, exit_: int, layers: int, a: float, d: int) -> float:
    cost = (d + 1) * per_layer * exit_ + d * fixed + per_layer * (layers - exit_) + fixed
    return (1 - a ** (d + 1)) / (1 - a) / cost


def test_the_least_acceptance_reaches_the_target_and_a_step_less_does_not():
    per_layer, fixed = 0.85 / 30, 0.15
    a, d = ceiling.least_acceptance(per_layer, fixed, 9, 30, 1.3)
    assert 0.5 < a < 1 and 1 <= d <= 8
    assert speedup(per_layer, fixed, 9, 30, a, d) >= 1.3
    assert all(speedup(per_layer, fixed, 9, 30, a - 0.001, k) < 1.3 for k in range(1, 9))
    # a deeper draft costs more per token, so it needs a higher acceptance
    assert ceiling.least_acceptance(per_layer, fixed, 15, 30, 1.3)[0] > a


def test_a_draft_exit_whose_ceiling_is_below_the_target_is_out_of_reach(tmp_path):
    ms = {str(e): 10.0 + 3.0 * e for e in (6, 12, 24, 30)}  # c_24 = 82/100: ceiling 1.22x
    profile = tmp_path / "last.ckpt.latency.json"
    profile.write_text(json.dumps({"cpu|threads=2": {"ms_per_token": ms}}))
    out = subprocess.run([sys.executable, str(SCRIPT), str(profile)], capture_output=True, text=True, check=True)
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines() if line.startswith("| ")}
    assert "| 24 | 0.82 | 1.22x | out of reach |" == rows["24"]
    assert "out of reach" not in rows["6"] and "30" not in rows


BAD = [None, "not json", "{}", '{"cpu": {"tokens": 16}}', '{"cpu": {"ms_per_token": {"30": 1.0}}}']


@pytest.mark.parametrize("text", BAD)
def test_a_missing_or_malformed_profile_is_one_line(tmp_path, text):
    profile = tmp_path / "last.ckpt.latency.json"
    if text is not None:
        profile.write_text(text)
    out = subprocess.run([sys.executable, str(SCRIPT), str(profile)], capture_output=True, text=True)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    assert "is not a latency profile" in out.stderr and str(profile) in out.stderr
