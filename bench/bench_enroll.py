"""On-site enrollment, leave one machine type out: every machine type of the standard corpus
is treated as never seen. The general bundle (`harken-export general`) is the same for
all of them: spectral-knn learns nothing across machine types, so leaving a type out of
its "training" changes nothing, and no type's data goes into it. Each section of the
held-out type is enrolled from its training clips with `harken enroll --files` (the
command line a technician runs), and its test clips are scored through the agent's
pipeline with the enrolled bank. Beside it, on the same clips: baseline-knn and the
per-machine spectral-knn bundle trained on a workstation.

Also measured: CPU seconds of one core to enroll 10 minutes of audio (60 intervals of
10 s, in process, one thread) and the size of that bank.

    .venv/bin/python bench/bench_enroll.py [--corpus corpora/standard]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (ROOT, corpus_root, detection_summary, pin_one_thread,  # noqa: E402
                           record, standard_corpus)

WORK = ROOT / "runs" / "bench-enroll"
TARGETS = {"vs_baseline": 0.05, "vs_per_machine": 0.03, "enroll_cpu_s": 60.0, "bank_mb": 5.0}


def site_config(folder: Path, bundle: Path, machine: str) -> Path:
    from harken.testkit.files import write_agent_config
    return write_agent_config(
        folder / "agent.toml", agent={"node": "bench", "machine": machine,
                                      "state_dir": folder / "state"},
        model={"bundle": bundle}, audio={"source": "file", "file": folder / "unused.wav"},
        decision={"interval_s": 10})


def main() -> None:
    pin_one_thread()
    from harken.agent.config import load_config
    from harken.agent.site.enroll import enroll
    from harken.agent.features import LogMelExtractor
    from harken.agent.build import build
    from harken.agent.sources.wavio import read_wav
    from harken.export.bundle import ExportOptions, write_general_bundle
    from harken.training.data.corpus import machine_types, scan
    from harken.training.evaluate import section_results
    from harken.training.methods import make_method
    from harken.training.metrics import machine_hmean

    corpus = standard_corpus(__doc__.splitlines()[0])
    shutil.rmtree(WORK, ignore_errors=True)
    bundle = write_general_bundle(WORK / "general", options=ExportOptions(precision="fp32"))
    harken = ROOT / ".venv" / "bin" / "harken"
    results: dict[str, list] = {"enrolled": [], "per-machine": [], "baseline-knn": []}
    machines = machine_types(corpus)
    for machine in machines:
        train, test = scan(corpus, [machine], "train"), scan(corpus, [machine], "test")
        scores = np.empty(len(test))
        for section in sorted({c.section for c in train}):
            site = WORK / machine / f"section_{section:02d}"
            site.mkdir(parents=True)
            cfg = site_config(site, bundle, machine)
            files = [str(c.path) for c in train if c.section == section]
            subprocess.run([str(harken), "enroll", "--config", str(cfg), "--files", *files,
                            "--json"], check=True, stdout=subprocess.DEVNULL)
            _, pipeline = build(load_config(cfg))
            extract = LogMelExtractor(pipeline.spec)
            for i, c in enumerate(test):
                if c.section == section:
                    scores[i] = pipeline.scorer.score_logmel(extract(read_wav(c.path, 16000)[0]))
        results["enrolled"] += section_results(machine, test, scores)
        for name in ("spectral-knn", "baseline-knn"):
            method = make_method(name)
            method.train(train, WORK / "runs" / name / machine, progress=False)
            key = "per-machine" if name == "spectral-knn" else name
            results[key] += section_results(machine, test, method.score(test, progress=False))
        print(f"{machine}: " + ", ".join(f"{k} {machine_hmean(v, machine):.4f}"
                                         for k, v in results.items()), flush=True)
    rows = {k: detection_summary(v) for k, v in results.items()}

    # 10 minutes of audio: 60 ten-second training clips of one section
    clips = [c for c in scan(corpus, [machines[0]], "train") if c.section == 0][:60]
    site = WORK / "timing"
    site.mkdir()
    cfg = load_config(site_config(site, bundle, machines[0]))
    t = time.process_time()
    out = enroll(cfg, files=[str(c.path) for c in clips], progress=False)
    cpu = time.process_time() - t
    timing = {"audio_s": out["audio_s"], "intervals": out["intervals"], "cpu_s": cpu,
              "bank_bytes": out["bank_bytes"]}
    e, b, p = rows["enrolled"], rows["baseline-knn"], rows["per-machine"]
    met = {"vs_baseline": e["official"] >= b["official"] + TARGETS["vs_baseline"],
           "vs_per_machine": abs(e["official"] - p["official"]) <= TARGETS["vs_per_machine"],
           "enroll_cpu_s": cpu < TARGETS["enroll_cpu_s"],
           "bank_mb": out["bank_bytes"] / 2 ** 20 < TARGETS["bank_mb"]}
    print(json.dumps({k: round(v["official"], 4) for k, v in rows.items()}),
          f"enroll 10 min: {cpu:.1f} CPU s, bank {out['bank_bytes'] / 1024:.0f} KiB", met)
    figures = {"corpus": {"root": corpus_root(corpus)}, "machines": machines, "rows": rows, "timing": timing,
               "targets": TARGETS, "met": met}
    print(f"wrote {record('enroll', 'bench/bench_enroll.py', figures)}")


if __name__ == "__main__":
    main()
