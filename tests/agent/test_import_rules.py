"""Import rules (docs/architecture.md): the device never needs torch, TensorFlow, training or
export; the agent's rooms import downward only, with no circle."""

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
    """Nor an optional dependency: prometheus_client (agent/sinks/metrics.py) loads only when
    ``[metrics] listen`` is set, so the device-only install imports every module without it."""
    parts = [p.relative_to(AGENT).with_suffix("").parts for p in AGENT.rglob("*.py")]
    modules = sorted(".".join(("harken", "agent", *(q[:-1] if q[-1] == "__init__" else q)))
                     for q in parts if q != ("__init__",))
    assert {"harken.agent.model.bundle", "harken.agent.model.backends", "harken.agent.model.scorer",
            "harken.agent.model.rules"} <= set(modules)
    code = (f"import sys, {', '.join(modules)};"
            "print(sorted(m for m in ('torch', 'tensorflow', 'harken.training', 'harken.export',"
            " 'librosa', 'sklearn', 'prometheus_client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# Optional dependencies (pyproject extras) and the agent modules that use them: each such
# module imports its dependency only inside the function that needs it, so every agent module
# imports on the device-only install (scripts/setup --device), which has none of them.
OPTIONAL_DEPENDENCIES = {"prometheus_client": ("harken.agent.sinks.metrics",)}
# Modules a feature loads only when it is turned on: `harken run` and `harken watch` without
# it never import them (nor what they import: http.server for the web page).
ON_DEMAND = {"harken.agent.plant.web.server": "harken watch --web",
             "harken.agent.plant.web.feed": "harken watch --web",
             "http.server": "harken watch --web",
             "prometheus_client": "[metrics] listen"}


def test_every_agent_module_imports_without_the_optional_dependencies():
    parts = [p.relative_to(AGENT).with_suffix("").parts for p in AGENT.rglob("*.py")]
    modules = sorted(".".join(("harken", "agent", *(q[:-1] if q[-1] == "__init__" else q)))
                     for q in parts if q != ("__init__",))
    users = {m for ms in OPTIONAL_DEPENDENCIES.values() for m in ms}
    assert users <= set(modules), "OPTIONAL_DEPENDENCIES names a module that is gone"
    blocked = "".join(f"sys.modules[{d!r}] = None\n" for d in OPTIONAL_DEPENDENCIES)
    code = f"import sys\n{blocked}import {', '.join(modules)}\nprint('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_a_feature_turned_off_loads_none_of_its_modules():
    code = ("import sys, harken.agent.cli, harken.agent.runner, harken.agent.build, "
            "harken.agent.plant.watch, harken.agent.plant.fleet\n"
            f"print(sorted(m for m in {sorted(ON_DEMAND)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_harken_run_starts_without_scipy_signal_or_stats():
    """They cost ~1 s and ~50 MB at start-up on the device; the run path needs neither
    (only resampling and calibration load them, when used)."""
    code = ("import sys, harken.agent.cli, harken.agent.runner, harken.agent.sinks.mqtt.sink;"
            "print(sorted(m for m in ('scipy.signal', 'scipy.stats') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# The agent's rooms from the microphone up (docs/architecture.md "The agent's rooms"): a
# module may import its own room and the rooms below it, never one above; harken.common is
# below them all. A room is a sub-package of agent/ or one of the top-level modules.
ROOMS = [
    ("",), ("features", "sources"), ("model",), ("decision",), ("sinks",),
    ("pipeline", "config"), ("build", "stats", "systemd", "statelock", "seqstore", "clock"),
    ("operator",), ("runner",), ("site", "plant"),
    ("cli",),
]


def _agent_modules(agent: Path = AGENT) -> dict[str, Path]:
    mods = {}
    for path in agent.rglob("*.py"):
        parts = path.relative_to(agent).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        mods[".".join(("harken", "agent", *parts))] = path
    return mods


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the agent modules it imports (at any depth of the file, lazy ones too)."""
    edges = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    found.add(t)
        edges[name] = found
    return edges


def _room(module: str) -> str:
    parts = module.split(".")[2:]
    return parts[0] if parts else ""


def _rank(room: str) -> int:
    for i, rooms in enumerate(ROOMS):
        if room in rooms:
            return i
    raise AssertionError(f"agent/{room}: not in a room of ROOMS; place it there (and in "
                         f"docs/architecture.md)")


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """Imports of a room above the importer's own, or of a sibling room on its level."""
    bad = []
    for src, targets in edges.items():
        for dst in targets:
            a, b = _room(src), _room(dst)
            if a != b and (_rank(b) > _rank(a) or (_rank(b) == _rank(a) and b != "")):
                bad.append(f"{src} -> {dst}")
    return sorted(bad)


def import_circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm): each
    holds at least one circle of imports."""
    index, low, stack, on, groups = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def test_the_agent_has_no_import_circle():
    assert import_circles(_edges(_agent_modules())) == []


def test_no_agent_module_imports_a_room_above_its_own():
    assert upward_imports(_edges(_agent_modules())) == []


def test_the_shared_package_imports_no_product_package():
    offenders = [f"{path.name}: {n}" for path in (ROOT / "harken" / "common").rglob("*.py")
                 for n in _imports(path)
                 if n.split(".")[:2] in (["harken", "agent"], ["harken", "training"],
                                         ["harken", "export"])]
    assert offenders == []


def test_the_rules_catch_a_circle_and_an_upward_import(tmp_path):
    """The checks above are only worth their silence if they can speak: a copy of two
    modules that import each other, one of them from a room above, is caught by both."""
    agent = tmp_path / "agent"
    (agent / "sinks").mkdir(parents=True)
    (agent / "sinks" / "__init__.py").write_text("")
    (agent / "sinks" / "out.py").write_text("from harken.agent.runner import Runner\n")
    (agent / "runner.py").write_text("from harken.agent.sinks.out import x\n")
    edges = _edges(_agent_modules(agent))
    assert import_circles(edges) == [["harken.agent.runner", "harken.agent.sinks.out"]]
    assert upward_imports(edges) == ["harken.agent.sinks.out -> harken.agent.runner"]


def test_the_testkit_stays_out_of_the_product_and_needs_no_pytest():
    """harken.testkit (what tests/ and bench/ share) is for tests and benchmarks only: no
    product module imports it, and bench/ runs without pytest, so it imports none at module
    level (a function that skips a test may, inside itself)."""
    users = [f"{path.relative_to(ROOT)}: {n}"
             for folder in ("agent", "training", "export", "harken/common")
             for path in (ROOT / folder).rglob("*.py") for n in _imports(path)
             if n == "harken.testkit" or n.startswith("harken.testkit.")]
    assert users == []
    module_level = []
    for path in (ROOT / "harken" / "testkit").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:       # statements at module level
            if isinstance(node, ast.Import):
                module_level += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                module_level.append(node.module)
    assert "harken.testkit.files" in module_level           # the walk sees the imports
    assert [n for n in module_level if n.split(".")[0] in {"pytest", "_pytest"}] == []
