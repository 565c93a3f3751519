"""Docs that name files of the repository name all of them, and only ones that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_row(folder: str) -> str:
    rows = [line for line in (ROOT / "README.md").read_text().splitlines()
            if line.startswith(f"| `{folder}/` |")]
    assert len(rows) == 1, f"README.md: one row for {folder}/ in the layout table"
    return rows[0]


def test_the_readme_names_every_board_config_and_no_missing_one():
    named = set(re.findall(r"`([\w.-]+\.toml)`", _readme_row("firmware_configs")))
    present = {p.name for p in (ROOT / "firmware_configs").glob("*.toml")}
    assert named == present


def test_the_readme_layout_names_only_agent_modules_that_exist():
    row = _readme_row("agent")
    for name in re.findall(r"`([\w/]+(?:\.py|/))`", row.split("|")[2]):
        hits = list((ROOT / "agent").rglob(name.rstrip("/")))
        assert hits, f"README.md names agent's {name}, which is not in agent/"


def test_architecture_names_every_agent_module_and_only_real_paths():
    """docs/architecture.md is the map of the code: every module of agent/ is on it (by
    its file name, under its room), and every path it names exists."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    missing = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "agent").rglob("*.py")
                     if p.name != "__init__.py" and p.name not in page)
    assert missing == []
    named = set(re.findall(r"\b((?:agent|training|export|harken|bench|tests)/[\w/]+\.py)\b", page))
    assert named and sorted(n for n in named if not (ROOT / n).exists()) == []


def test_every_test_that_reliability_md_cites_exists():
    """docs/reliability.md holds each case to a test by name: a renamed or deleted test
    would leave a promise no test keeps."""
    missing = []
    for line in (ROOT / "docs" / "reliability.md").read_text().splitlines():
        if not line.startswith("| ") or line.count("|") < 4:
            continue
        current = None
        for ref in re.findall(r"`([^`]*::[\w\[\]-]+|tests/[\w/]+\.py)`", line.split("|")[-2]):
            path, _, name = ref.partition("::")
            current = path or current
            if current is None or not (ROOT / current).is_file():
                missing.append(ref)
            elif name and f"def {name.split('[')[0]}(" not in (ROOT / current).read_text():
                missing.append(f"{current}::{name}")
    assert missing == []
