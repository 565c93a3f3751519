"""bench/probe_proxy.py refuses bad command lines in one line, before any work."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "probe_proxy.py"), *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize("args, text", [
    (["--corpus", "x", "--compute", "--rounds", "0"], "'0': expected a whole number of at least 1"),
    (["--corpus", "x", "--compute", "--rounds", "6"], "--rounds 6: expected 1..5"),
    (["--corpus", "x"], "give --metrics files or --compute"),
    (["--corpus", "x", "--compute", "--variants", "loud"], "unknown variant(s) ['loud']"),
    (["--corpus", "no/such/folder", "--compute"], "--corpus no/such/folder: no such folder"),
])
def test_bad_command_lines_are_refused_in_one_line(args, text):
    done = probe(*args)
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1 and text in lines[0]


def test_a_file_that_is_no_metrics_json_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "metrics.json"
    bad.write_text("{\"official\": 1}")
    done = probe("--corpus", str(tmp_path), "--metrics", str(bad))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"{bad}: not an evaluate metrics.json ('machines')"]
