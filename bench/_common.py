"""Shared by the bench scripts: one-thread settings, timing, machine description, and
writing results that bench/report.py turns into docs/benchmarks.md."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                               "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS")}
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def positive(text: str) -> int:
    """A whole number of at least 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of at least 1")
    return value


def bundle_dir(text: str) -> Path:
    """An exported bundle folder (argparse type): one with a manifest.json; absolute, since
    the benches run the agent from other folders."""
    path = Path(text)
    if not (path / "manifest.json").is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: not a bundle folder (no manifest.json "
                                         "in it); give a folder harken-export wrote")
    return path.resolve()


def pin_one_thread() -> None:
    """Re-exec with single-threaded BLAS/OpenMP unless already so (must run before numpy)."""
    if any(os.environ.get(k) != v for k, v in ONE_THREAD.items()):
        os.environ.update(ONE_THREAD)
        os.execv(sys.executable, [sys.executable, *sys.argv])


def cpu_seconds(fn, repeats: int = 7) -> float:
    """Median CPU time of ``fn`` (one warm-up call first)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy
    import scipy
    return {"cpu": cpu, "cores": os.cpu_count(), "os": platform.platform(),
            "python": platform.python_version(), "numpy": numpy.__version__,
            "scipy": scipy.__version__}


def record(name: str, command: str, figures: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"name": name, "command": command, "when": dt.datetime.now(dt.timezone.utc)
            .isoformat(timespec="seconds"), "machine": machine(), **figures}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def standard_corpus(description: str) -> Path:
    """``--corpus`` (default corpora/standard) from the command line; exits with how to
    make it when it is not there."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--corpus", type=Path, default=ROOT / "corpora" / "standard")
    corpus = ap.parse_args().corpus
    if not (corpus / "corpus.json").is_file():
        sys.exit(f"{corpus}: no corpus; make it with "
                 f"'harken-train synth --size standard --out {corpus}'")
    return corpus


def corpus_root(corpus: Path) -> str:
    """The corpus folder as the results record it: relative to the repository if inside."""
    for path in (corpus.absolute(), corpus.resolve()):   # a linked corpora/ stays relative
        if path.is_relative_to(ROOT):
            return str(path.relative_to(ROOT))
    return str(corpus.resolve())


def detection_summary(results) -> dict:
    """Official score, mean AUC per domain, mean pAUC and score per machine type of a list
    of training/evaluate.py section results."""
    import numpy as np

    from harken.training.metrics import machine_hmean, official_score
    machines = sorted({r.machine for r in results})
    return {"official": official_score(results),
            "auc_source": float(np.mean([r.auc_source for r in results])),
            "auc_target": float(np.mean([r.auc_target for r in results])),
            "pauc": float(np.mean([r.pauc for r in results])),
            "machines": {m: machine_hmean(results, m) for m in machines}}


def baseline_knn_results(machine: str, train, test, folder: Path) -> list:
    """baseline-knn trained on ``train`` into ``folder``: its section results on ``test``
    (the floor every detection bench compares with)."""
    from harken.training.evaluate import section_results
    from harken.training.methods import make_method
    baseline = make_method("baseline-knn")
    baseline.train(train, folder, progress=False)
    return section_results(machine, test, baseline.score(test, progress=False))


def export_and_verify(run: Path, out: Path, corpus: Path):
    """The run exported (default options) and every artifact verified through the agent's
    scorer: (bundle, artifact -> verify figures), the torch reference row left out."""
    from harken.agent.model.bundle import open_bundle
    from harken.export.bundle import ExportOptions, write_bundle
    from harken.export.verify import verify
    bundle = open_bundle(write_bundle(run, out, corpus, ExportOptions()))
    return bundle, {c.artifact: c.to_dict() for c in verify(bundle, corpus, run, progress=False)
                    if c.artifact != "torch-fp32"}


def bundle_row(name: str, by_machine: dict[str, dict]) -> dict:
    """One artifact's verify figures over the machine types: official (hmean), mean AUCs,
    largest errors against the float score, median latency."""
    import numpy as np

    from harken.training.metrics import hmean
    ms = {m: x["official"] for m, x in by_machine.items()}
    return {"name": name, "official": hmean(list(ms.values())), "machines": ms,
            "auc_source": float(np.mean([x["auc_source"] for x in by_machine.values()])),
            "auc_target": float(np.mean([x["auc_target"] for x in by_machine.values()])),
            "max_rel_error": max(x["max_rel_error"] for x in by_machine.values()),
            "max_abs_error": max(x.get("max_abs_error", float("nan"))
                                 for x in by_machine.values()),
            "ms_per_window": float(np.median([x["latency_ms"] for x in by_machine.values()]))}


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM, the process's own peak resident memory since its exec (ru_maxrss would
    also count the bench's pages the child had between fork and exec)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None
