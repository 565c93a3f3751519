"""Mutation testing of the device core: do the tests notice when the code is wrong?

Each listed module is mutated one small change at a time (a flipped comparison, a boundary
moved, a number off by one, a condition negated, a loop that never runs...) by cosmic-ray,
and the tests that own the module run against every mutant. A mutant the tests still pass
("survived") is a bug they would miss. The score and every survivor go to docs/mutation.md;
survivors that are equivalent mutants (no behaviour changes) are explained by hand in
scripts/mutation-equivalents.toml and the page says so next to each.

cosmic-ray (not mutmut) because it mutates the file in place and runs any test command:
mutmut 3 copies the sources into mutants/ and relies on the import path finding the copy,
which the editable install's package-dir mapping (agent/ imported as harken.agent) defeats.

Slow (about an hour on 2 cores for everything), so not part of CI. Run as scripts/mutation
[--only agent/decision/hysteresis.py ...]. The checkout's files are restored on every exit path.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "mutation.md"
EQUIVALENTS = ROOT / "scripts" / "mutation-equivalents.toml"
WORK = ROOT / "runs" / "mutation"

# module (or package folder) -> the tests that own it
TARGETS: dict[str, tuple[str, ...]] = {
    "agent/decision/hysteresis.py": ("tests/agent/test_decision_health.py",),
    "agent/decision/health.py": ("tests/agent/test_decision_health.py",),
    "agent/decision/thresholds.py": ("tests/agent/test_thresholds.py",),
    "agent/sinks/mqtt/outbox.py": ("tests/agent/test_outbox.py",),
    "agent/sources/ringbuffer.py": ("tests/agent/test_ringbuffer.py",),
    "agent/model/rules": ("tests/agent/test_rules.py",),
    "agent/features/extract.py": ("tests/agent/test_features.py",
                                  "tests/agent/test_feature_edges.py"),
    "agent/features/spec.py": ("tests/agent/test_features.py", "tests/agent/test_feature_edges.py"),
    "agent/features/mel.py": ("tests/agent/test_features.py",),
    "agent/features/windows.py": ("tests/agent/test_features.py",
                                  "tests/agent/test_feature_edges.py"),
    # the config is assembled from the sources' and sinks' own settings: the tests of
    # [[machines]] views, sources and plugins own that part of it
    "agent/config.py": ("tests/agent/test_config.py", "tests/agent/test_config_docs.py",
                        "tests/agent/test_machines.py", "tests/agent/test_sources.py",
                        "tests/agent/test_plugins.py"),
    "training/metrics.py": ("tests/training/test_metrics.py",),
}

# The operators applied. cosmic-ray's full set replaces every operator with every other
# (eleven alternatives for each `+`), which multiplies the run time without finding more:
# we keep the mutants that model real slips.
COMPARISONS = {"Eq_NotEq", "NotEq_Eq", "Lt_LtE", "LtE_Lt", "Gt_GtE", "GtE_Gt", "Lt_GtE",
               "GtE_Lt", "Gt_LtE", "LtE_Gt", "Is_IsNot", "IsNot_Is", "In_NotIn", "NotIn_In"}
ARITHMETIC = {"Add_Sub", "Sub_Add", "Mul_Div", "Div_Mul"}
OTHERS = {"AddNot", "ReplaceTrueWithFalse", "ReplaceFalseWithTrue", "ReplaceAndWithOr",
          "ReplaceOrWithAnd", "ReplaceBreakWithContinue", "ReplaceContinueWithBreak",
          "ExceptionReplacer", "NumberReplacer", "ZeroIterationForLoop"}
# A mutant can make a test hang (a loop that never ends): each test may take this many times
# its unmutated duration, at least MIN_TIMEOUT_S, before pytest-timeout fails it.
TIMEOUT_FACTOR, MIN_TIMEOUT_S = 5.0, 10.0


def kept(operator: str) -> bool:
    name = operator.split("/", 1)[1]
    kind, _, pair = name.partition("_")
    if kind == "ReplaceComparisonOperator":
        return pair in COMPARISONS
    if kind == "ReplaceBinaryOperator":
        return pair in ARITHMETIC
    if kind == "ReplaceUnaryOperator":
        return pair.startswith("Delete_")
    return name in OTHERS


@dataclass
class Mutant:
    module: str
    line: int
    operator: str
    source: str          # the original line, stripped
    outcome: str         # killed | survived | incompetent
    diff: str
    why: str | None = None   # why it survived, for a survivor explained by hand


def _python() -> str:
    return sys.executable


def _session(target: str) -> Path:
    """Where cosmic-ray keeps a target's mutants and results (its config beside it)."""
    return WORK / f"{target.replace('/', '_').removesuffix('.py')}.sqlite"


def _module_files(target: str) -> list[Path]:
    path = ROOT / target
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


def _test_command(tests: tuple[str, ...], timeout_s: float) -> str:
    # -x: a killed mutant needs only its first failure; no cache so runs do not interact
    return " ".join([shlex.quote(_python()), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                     "-o", "addopts=", f"--timeout={timeout_s:.0f}", *tests])


def run_target(target: str, tests: tuple[str, ...]) -> list[Mutant]:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    started = time.monotonic()
    baseline = subprocess.run(shlex.split(_test_command(tests, 600)), cwd=ROOT,
                              capture_output=True, text=True)
    if baseline.returncode != 0:
        sys.exit(f"mutation: the tests of {target} fail before any mutation "
                 f"({' '.join(tests)}); fix them first:\n{baseline.stdout[-2000:]}")
    took = time.monotonic() - started
    cmd = _test_command(tests, max(MIN_TIMEOUT_S, TIMEOUT_FACTOR * took))
    WORK.mkdir(parents=True, exist_ok=True)
    session = _session(target)
    config = session.with_suffix(".toml")
    files = [str(p.relative_to(ROOT)) for p in _module_files(target)]
    # JSON strings and lists are valid TOML values
    config.write_text("[cosmic-ray]\n"
                      f"module-path = {json.dumps(files)}\n"
                      f"timeout = {max(3 * MIN_TIMEOUT_S, 3 * TIMEOUT_FACTOR * took):.0f}\n"
                      "excluded-modules = []\n"
                      f"test-command = {json.dumps(cmd)}\n"
                      "[cosmic-ray.distributor]\nname = \"local\"\n")
    session.unlink(missing_ok=True)
    subprocess.run([_python(), "-m", "cosmic_ray.cli", "init", str(config), str(session)],
                   cwd=ROOT, check=True)
    with use_db(str(session), WorkDB.Mode.open) as db:
        seen: set[tuple[str, tuple[int, int]]] = set()
        # in source order, so the NumberReplacer mutant kept per literal is the same each run
        items = sorted(db.pending_work_items, key=lambda i: (
            str(i.mutations[0].module_path), tuple(i.mutations[0].start_pos),
            i.mutations[0].operator_name, i.mutations[0].occurrence))
        for item in items:
            m = item.mutations[0]
            key = (str(m.module_path), tuple(m.start_pos))
            # NumberReplacer makes two mutants per literal (-1 and +1): one is enough
            duplicate = m.operator_name == "core/NumberReplacer" and key in seen
            if m.operator_name == "core/NumberReplacer":
                seen.add(key)
            if duplicate or not kept(m.operator_name):
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
        pending = db.num_work_items - db.num_results
    print(f"mutation: {target}: {pending} mutants against {' '.join(tests)}", flush=True)
    backups = {f: (ROOT / f).read_bytes() for f in files}
    proc = subprocess.Popen([_python(), "-m", "cosmic_ray.cli", "exec", str(config),
                             str(session)], cwd=ROOT)
    try:
        if proc.wait() != 0:
            sys.exit(f"mutation: cosmic-ray failed on {target} (exit {proc.returncode})")
    finally:
        if proc.poll() is None:           # interrupted: stop it before restoring the files
            proc.terminate()
            proc.wait()
        for f, data in backups.items():   # cosmic-ray restores too; this covers a kill
            if (ROOT / f).read_bytes() != data:
                (ROOT / f).write_bytes(data)
    return _read_session(session)


def _read_session(session: Path) -> list[Mutant]:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome

    out = []
    lines: dict[str, list[str]] = {}          # each mutated module read once
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            m = item.mutations[0]
            line = m.start_pos[0]
            path = str(m.module_path)
            if path not in lines:
                lines[path] = (ROOT / path).read_text().splitlines()
            source = lines[path][line - 1].strip()
            outcome = result.test_outcome.value if result.test_outcome else "incompetent"
            out.append(Mutant(str(m.module_path), line, m.operator_name, source, outcome,
                              result.diff or ""))
    return out


def explain(mutants: list[Mutant]) -> None:
    """Attach the hand-written equivalence notes (keyed by module, operator, source line)."""
    if not EQUIVALENTS.exists():
        return
    notes = tomllib.loads(EQUIVALENTS.read_text()).get("equivalent", [])
    for m in mutants:
        for n in notes:
            if (n["module"], n["operator"], n["source"]) == (m.module, m.operator, m.source):
                m.why = n["why"]


def write_page(by_target: dict[str, list[Mutant]]) -> None:
    lines = ["# Mutation testing of the device core", "",
             "Generated by `scripts/mutation` (cosmic-ray; not part of CI, about an hour on "
             "2 cores). Each module is mutated one small change at a time and the tests that "
             "own it run against every mutant; a mutant the tests pass *survived*. The score "
             "counts a mutant as caught when the tests fail on it (a hang stopped by the "
             "timeout counts as caught) or when it survived for a reason explained below "
             "(mostly equivalent mutants: the code behaves the same); 'killed only' leaves "
             "the explained ones out. "
             "Operators: comparisons (each flipped and each boundary moved), `+`/`-` and "
             "`*`/`/` swapped, unary minus and `not` dropped, a `not` added to every "
             "condition, `True`/`False`, `and`/`or`, `break`/`continue` swapped, exceptions "
             "caught replaced, each number literal moved by one, loops that run zero times.", "",
             "| module | tests | mutants | killed | explained | not explained | score | killed only |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    details = []
    for target, mutants in by_target.items():
        killed = sum(m.outcome == "killed" for m in mutants)
        explained = sum(m.outcome != "killed" and m.why is not None for m in mutants)
        survived = len(mutants) - killed - explained
        score = (killed + explained) / len(mutants) if mutants else float("nan")
        tests = ", ".join(f"`{Path(t).name}`" for t in TARGETS[target])
        strict = killed / len(mutants) if mutants else float("nan")
        lines.append(f"| `{target}` | {tests} | {len(mutants)} | {killed} | {explained} | "
                     f"{survived} | {score:.0%} | {strict:.0%} |")
        for m in sorted(mutants, key=lambda m: (m.module, m.line)):
            if m.outcome == "killed":
                continue
            label = f"survived, explained: {m.why}" if m.why else f"**{m.outcome}**, not explained"
            diff = "\n".join(ln for ln in m.diff.splitlines()
                             if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---")))
            details += [f"### `{m.module}:{m.line}` {m.operator.split('/')[1]}", "", label, "",
                        "```diff", diff, "```", ""]
    lines += ["", "## Survivors", ""] + (details or ["None."])
    PAGE.write_text("\n".join(lines).rstrip() + "\n")


def _prebuilt_test_data() -> None:
    """The corpora and bundles the tests use, built once here (harken.testkit.data) and
    named by HARKEN_TEST_DATA for every mutant's test run: rebuilt per mutant, a bundle
    would cost more than the tests."""
    if os.environ.get("HARKEN_TEST_DATA"):
        return
    folder = WORK / "test-data"
    if not (folder / "ready").exists():
        subprocess.run([_python(), "-m", "harken.testkit.data", str(folder)], cwd=ROOT,
                       check=True)
        (folder / "ready").touch()
    os.environ["HARKEN_TEST_DATA"] = str(folder)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=sorted(TARGETS), metavar="TARGET",
                    help=f"run these targets only (of {', '.join(TARGETS)}); the page keeps "
                         "the other targets' last results")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the page from the last sessions in runs/mutation/")
    args = ap.parse_args(argv)
    if shutil.which("git") and subprocess.run(
            ["git", "diff", "--quiet", "--", *TARGETS], cwd=ROOT).returncode != 0:
        print("mutation: note: the modules have uncommitted changes; they are mutated as "
              "they are now and restored afterwards", file=sys.stderr)
    _prebuilt_test_data()
    by_target = {}
    for target, tests in TARGETS.items():
        session = _session(target)
        if not args.report_only and (args.only is None or target in args.only):
            by_target[target] = run_target(target, tests)
        elif session.exists():
            by_target[target] = _read_session(session)
    for mutants in by_target.values():
        explain(mutants)
    write_page(by_target)
    print(f"mutation: wrote {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
