"""DESIGN.md import rules: the device never needs torch, TensorFlow, training or export."""

import ast
import subprocess
import sys
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "agent"
FORBIDDEN = {"torch", "tensorflow", "training", "export", "librosa", "sklearn"}


def test_agent_sources_import_nothing_forbidden():
    offenders = []
    for path in AGENT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_importing_the_agent_loads_no_heavy_framework():
    modules = sorted(f"agent.{p.stem}" for p in AGENT.glob("*.py") if p.stem != "__init__")
    assert {"agent.bundle", "agent.backends", "agent.scorer", "agent.rules"} <= set(modules)
    code = (f"import sys, {', '.join(modules)};"
            "print(sorted(m for m in ('torch', 'tensorflow', 'training', 'export', 'librosa', 'sklearn')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_harken_run_starts_without_scipy_signal_or_stats():
    """They cost ~1 s and ~50 MB at start-up on the device; the run path needs neither
    (only resampling and calibration load them, when used)."""
    code = ("import sys, agent.cli, agent.runner, agent.mqtt;"
            "print(sorted(m for m in ('scipy.signal', 'scipy.stats') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
