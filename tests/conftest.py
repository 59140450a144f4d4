"""Shared fixtures. The real-Slurm fixtures live in tests/conftest_slurm.py."""
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["tests.conftest_slurm"]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def packed_data(tmp_path_factory) -> Path:
    """The demo dataset (synthetic corpus, local tokenizer, packed to 64 tokens), made once by stage=prepare."""
    runs = tmp_path_factory.mktemp("prepared")
    result = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "submit.py"), "stage=prepare", "model=tiny-mixtral", "site=local",
         f"runs_root={runs}", "run=shared"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return runs / "shared" / "data"
