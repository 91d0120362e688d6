"""Shipped personas, scenarios and prompts are found after a non-editable install, from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_carries_the_shipped_yaml(tmp_path: Path) -> None:
    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(ROOT)], check=True)
    (wheel,) = wheels.glob("sdpo_env-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    str(wheel)], check=True)
    code = (
        "import sdpo_env, sdpo_env.files as f; from sdpo_env.scenarios import load_scenario;"
        "from sdpo_env.prompts import load_prompts;"
        "s = load_scenario('flip'); print(sdpo_env.__file__); print(f.shipped_dir('users'));"
        "print(s.persona_at(250).name, len(load_prompts('eval')))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, check=True, capture_output=True,
                         text=True).stdout.splitlines()
    assert out[0].startswith(str(site)), "imported the source tree instead of the installed wheel"
    assert out[1] == str(site / "sdpo_env" / "_shipped" / "users")
    assert out[2].split()[0] == "detailed_professional_expert" and int(out[2].split()[1]) >= 64
