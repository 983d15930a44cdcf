"""Every script in ``benchmarks/`` runs in its --quick mode, exits 0 and prints its ratio line
(the brief: a figure and its ratio to a baseline from the same run), so none can rot: a later
validation rule once broke ``run_overhead.py`` silently. Figures are printed, never asserted.

A new script is picked up by the glob; a script whose quick mode needs more than the ratio line
checked names its extra checks in ``EXTRA``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))

# further lines a script's quick output must hold (the figures its readers look for)
EXTRA = {
    "certlog.py": [r"inclusion proof \+ entry \+ verify\s+median", r"consistency proof\s+median"],
    "purchases.py": [r"purchases", r"event-loop lag buying: +p50 .* p99 "],
    "platform_query.py": [r"start 2 unit servers in parallel .*: \d+\.\d s",
                          r"unit \w+: resident memory \d+ MB", r"Spark Connect warm query: median",
                          r"classic SparkSession \(local\[2\]"],
    "secure_aggregation.py": [r"ciphertext / float32 bytes"],
}


def test_the_glob_finds_every_known_benchmark():
    assert set(EXTRA) <= set(SCRIPTS)
    assert "run_overhead.py" in SCRIPTS and "certlog_core.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_quick_mode_runs(script):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"\bratio\b", out), \
        f"{script} printed no ratio line:\n{out[-2000:]}"
    for pattern in EXTRA.get(script, []):
        assert re.search(pattern, out), f"{script}: no line matching {pattern!r}:\n{out[-2000:]}"
    print(out)
