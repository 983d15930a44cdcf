"""Every benchmark's --quick mode runs to the end and prints its figures, so none can rot.
Figures are printed, never asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script, expected", [
    ("certlog.py", "inclusion proof"),
    ("certlog_core.py", "ratio"),
    ("purchases.py", "purchases"),
    ("run_overhead.py", "ratio"),
])
def test_benchmark_quick_mode_runs(script, expected):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert expected in done.stdout, done.stdout[-2000:]
    print(done.stdout)
