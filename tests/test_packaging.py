"""The wheel a device installs: one `harken` namespace, the agent's runtime without torch or
TensorFlow, and the commands working from outside the repository (docs/deploy.md)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from harken.testkit.files import write_agent_config

# its module-scoped fixtures are costly to build: under xdist one worker runs the whole file
pytestmark = pytest.mark.xdist_group("test_packaging")

ROOT = Path(__file__).resolve().parents[1]


def _run(*cmd, cwd, check=True):
    # a clean environment: a PYTHONPATH pointing at a checkout would make pip think harken
    # is already installed (its egg-info) and the venv would get no commands
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                         timeout=900, env=env)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


# what a checkout holds at its top besides the source (training/data/ is source: only
# top-level names are skipped), and caches anywhere
TOP_LEVEL_NOT_SOURCE = {".git", ".venv", "build", "dist", ".pytest_cache", "corpora", "runs",
                        "quickstart", "demo", "data", ".gl", ".whl"}


def not_source(folder: str, names: list[str]) -> set[str]:
    skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
    if Path(folder) == ROOT:
        skip |= TOP_LEVEL_NOT_SOURCE & set(names)
    return skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a clean copy of the source: setuptools builds in the tree, and a stale
    build/ folder there could smuggle deleted modules into the wheel."""
    src = tmp_path_factory.mktemp("src") / "harken"
    shutil.copytree(ROOT, src, ignore=not_source)
    folder = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", folder, src, cwd=folder)
    (found,) = folder.glob("harken-*.whl")
    return found


def test_the_wheel_holds_one_top_level_package_with_the_agent_and_its_unit(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"harken"}
    for needed in ("harken/__main__.py", "harken/agent/cli.py", "harken/agent/features/extract.py",
                   "harken/systemd/harken.service"):
        assert needed in names
    # every package folder of the source tree is in the wheel (pyproject.toml lists them)
    for folder, ns in (("agent", "harken/agent"), ("training", "harken/training"),
                       ("export", "harken/export"), ("harken", "harken")):
        for init in (ROOT / folder).rglob("__init__.py"):
            inside = init.relative_to(ROOT / folder).as_posix()
            assert f"{ns}/{inside}" in names, f"{folder}/{inside} is not in the wheel"
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "harken = harken.agent.cli:main" in entry_points
    assert not any(n.startswith(("tests/", "bench/", "agent/", "training/")) for n in names)


@pytest.mark.slow
def test_a_device_venv_from_the_wheel_runs_the_agent_outside_the_repository(
        wheel, ae_bundle, small_fan, tmp_path):
    """Only the device extras: no torch, no TensorFlow; version, check-config and score
    from a folder that is not the checkout; harken-train says which extra it needs."""
    from harken.training.data.corpus import scan
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    py, bin_ = venv / "bin" / "python", venv / "bin"
    _run(py, "-m", "pip", "install", "-q", f"{wheel}[tflite]", cwd=tmp_path)
    elsewhere = tmp_path / "site"
    elsewhere.mkdir()

    assert _run(bin_ / "harken", "version", cwd=elsewhere).stdout.startswith("harken ")
    assert _run(py, "-m", "harken", "version", cwd=elsewhere).stdout.startswith("harken ")
    absent = _run(py, "-c", "import importlib.util as u; print([m for m in ('torch', "
                  "'tensorflow') if u.find_spec(m)])", cwd=elsewhere).stdout.strip()
    assert absent == "[]"

    wav = scan(small_fan, ["fan"], "test")[0].path
    cfg = write_agent_config(elsewhere / "agent.toml", agent={"node": "n1", "machine": "fan"},
                             model={"bundle": ae_bundle, "artifact": "tflite-int8"},
                             audio={"source": "file", "file": wav})
    checked = _run(bin_ / "harken", "check-config", cfg, cwd=elsewhere).stdout
    assert '"artifact": "tflite-int8"' in checked
    scored = _run(bin_ / "harken", "score", ae_bundle, wav, "--json", cwd=elsewhere).stdout
    assert '"score"' in scored

    # what pip installed: the harken package, its metadata and the three scripts
    files = _run(py, "-m", "pip", "show", "-f", "harken", cwd=elsewhere).stdout
    listed = [ln.strip() for ln in files.split("Files:")[1].splitlines() if ln.strip()]
    tops = {f.split("/")[0] for f in listed if not f.startswith("..")}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"harken"}

    refused = _run(bin_ / "harken-train", "methods", cwd=elsewhere, check=False)
    assert refused.returncode == 2
    assert "harken[train]" in refused.stderr and "Traceback" not in refused.stderr

    unit = _run(bin_ / "harken", "systemd-unit", cwd=elsewhere).stdout
    assert f"ExecStart={bin_ / 'harken'} run --config /etc/harken/agent.toml" in unit
