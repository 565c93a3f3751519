"""DESIGN.md import rules: the device never needs torch, TensorFlow, training or export."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "agent"
FORBIDDEN = {"torch", "tensorflow", "harken.training", "harken.export", "librosa", "sklearn"}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_agent_sources_import_nothing_forbidden():
    offenders = [f"{path.name}: {n}" for path in AGENT.rglob("*.py") for n in _imports(path)
                 if _forbidden(n)]
    assert offenders == []


def test_every_project_import_goes_through_the_harken_namespace():
    """agent/, training/ and export/ install as harken.agent, harken.training and
    harken.export: a bare ``from agent...`` would load a second copy of a module from the
    checkout (two ConfigError classes, two registries) and fail outside the repository."""
    offenders = [f"{path.relative_to(ROOT)}: {n}"
                 for folder in ("agent", "training", "export", "harken", "tests", "bench")
                 for path in (ROOT / folder).rglob("*.py")
                 for n in _imports(path) if n.split(".")[0] in {"agent", "training", "export"}]
    assert offenders == []


def test_importing_the_agent_loads_no_heavy_framework():
    parts = [p.relative_to(AGENT).with_suffix("").parts for p in AGENT.rglob("*.py")]
    modules = sorted(".".join(("harken", "agent", *(q[:-1] if q[-1] == "__init__" else q)))
                     for q in parts if q != ("__init__",))
    assert {"harken.agent.bundle", "harken.agent.backends", "harken.agent.scorer",
            "harken.agent.rules"} <= set(modules)
    code = (f"import sys, {', '.join(modules)};"
            "print(sorted(m for m in ('torch', 'tensorflow', 'harken.training', 'harken.export',"
            " 'librosa', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_harken_run_starts_without_scipy_signal_or_stats():
    """They cost ~1 s and ~50 MB at start-up on the device; the run path needs neither
    (only resampling and calibration load them, when used)."""
    code = ("import sys, harken.agent.cli, harken.agent.runner, harken.agent.mqtt;"
            "print(sorted(m for m in ('scipy.signal', 'scipy.stats') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
