"""A DC offset on the microphone (0, 0.01, 0.05, 0.1 of full scale), with and without the
device's DC removal (agent/sources/dc.py), on the standard synthetic corpus through the
default bundle (spectral-knn, exported with default options, scored by the agent's own
scorer): AUC and the false-alarm rate at the bundle's threshold.

Per machine type: spectral-knn trained on the training clips, exported, and every test clip
(normal and anomalous) scored as one 10-s interval, the offset added to its samples. "off"
is the front end as it was (the offset reaches the features); "on" is what `harken run` and
`harken score` do now. The offset-free row with removal on shows what the removal costs
clips that carry no offset.

"stream": what the removal does to offset-free audio on a device, where a stream runs for
hours: 80 s of normal test clips of section 00 played as one stream, each 10-s interval
scored with the removal's running mean over 1 s and over 10 s (the default), and how much
its score moves (relative) against no removal: the first interval (the stream's start)
and the others. "cost": CPU time of one 0.1-s push at 16 kHz.

Writes bench/results/dc-offset.json (docs/agent.md cites it).

    .venv/bin/python bench/bench_dc_offset.py [--corpus corpora/standard]
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (ROOT, corpus_root, pin_one_thread, record,  # noqa: E402
                           standard_corpus)

OFFSETS = (0.0, 0.01, 0.05, 0.1)
WORK = ROOT / "runs" / "bench-dc-offset"


def main() -> None:
    pin_one_thread()
    import numpy as np

    from harken.agent.features import LogMelExtractor
    from harken.agent.model.bundle import open_bundle
    from harken.agent.model.factory import make_scorer
    from harken.agent.sources.dc import remove_dc
    from harken.agent.sources.wavio import read_wav
    from harken.export.bundle import ExportOptions, write_bundle
    from harken.training.data.corpus import machine_types, scan
    from harken.training.methods import DEFAULT_METHOD, make_method
    from harken.training.metrics import section_result

    corpus = standard_corpus(__doc__.splitlines()[0])
    shutil.rmtree(WORK, ignore_errors=True)
    cases = [(dc, on) for dc in OFFSETS for on in (False, True)]
    per_case: dict[tuple, dict] = {c: {"aucs": [], "false_alarms": 0, "normals": 0}
                                   for c in cases}
    started = time.perf_counter()
    stream: dict[str, dict] = {}
    for machine in machine_types(corpus):
        train, test = scan(corpus, [machine], "train"), scan(corpus, [machine], "test")
        run = WORK / "runs" / machine
        make_method(DEFAULT_METHOD).train(train, run, progress=False)
        bundle = open_bundle(write_bundle(run, WORK / "bundles" / machine, corpus,
                                          ExportOptions()))
        rate, threshold = bundle.spec.sample_rate, bundle.threshold
        extract = LogMelExtractor(bundle.spec)
        scorers = {s: make_scorer(bundle, s) for s in bundle.sections}
        scores = {c: np.empty(len(test)) for c in cases}
        for i, clip in enumerate(test):
            x, _ = read_wav(clip.path, rate)
            for dc, on in cases:
                y = x + np.float32(dc)
                if on:
                    y = remove_dc(y, rate)
                scores[(dc, on)][i] = scorers[clip.section].score_logmel(extract(y))
        for c in cases:
            for section in bundle.sections:
                idx = [i for i, clip in enumerate(test) if clip.section == section]
                r = section_result(machine, section, scores[c][idx],
                                   [test[i].is_anomaly for i in idx],
                                   [test[i].domain for i in idx])
                per_case[c]["aucs"] += [r.auc_source, r.auc_target]
            normal = np.array([not clip.is_anomaly for clip in test])
            per_case[c]["false_alarms"] += int((scores[c][normal] > threshold).sum())
            per_case[c]["normals"] += int(normal.sum())
        stream[machine] = stream_effect(bundle, scorers[0], extract, [
            read_wav(c.path, rate)[0] for c in test
            if not c.is_anomaly and c.section == 0][:8])
        print(f"{machine}: " + ", ".join(
            f"dc {dc:g} {'on' if on else 'off'}: false alarms "
            f"{(scores[(dc, on)][[not t.is_anomaly for t in test]] > threshold).mean():.3f}"
            for dc, on in cases), flush=True)

    rows = []
    for (dc, on), v in per_case.items():
        rows.append({"dc_offset": dc, "removal": on,
                     "auc": float(np.nanmean(v["aucs"])),
                     "false_alarm_rate": v["false_alarms"] / v["normals"],
                     "normal_clips": v["normals"]})
    print(f"\n{'offset':>7}  {'removal':>7}  {'mean AUC':>8}  {'false alarms':>12}")
    for r in rows:
        print(f"{r['dc_offset']:>7g}  {'on' if r['removal'] else 'off':>7}  "
              f"{r['auc']:>8.4f}  {r['false_alarm_rate']:>12.3f}")
    for machine, v in stream.items():
        print(f"stream {machine}: " + ", ".join(
            f"{w:g} s: first {v[w]['first']:.4f}, rest median {v[w]['median']:.5f} max "
            f"{v[w]['max']:.5f}" for w in v))
    cost = push_cost()
    print(f"cost: {cost:.1f} us per 0.1-s push")
    path = record("dc-offset", "bench/bench_dc_offset.py",
                  {"corpus": corpus_root(corpus), "method": DEFAULT_METHOD,
                   "offsets": list(OFFSETS), "rows": rows, "stream": stream,
                   "push_us": round(cost, 1),
                   "note": "AUC: mean over machine types, sections and domains (source, "
                           "target) of the DCASE AUC; false alarms: normal test clips "
                           "scored above the bundle's threshold",
                   "wall_s": round(time.perf_counter() - started, 1)})
    print(f"wrote {path}")


def stream_effect(bundle, scorer, extract, clips: list) -> dict:
    """Relative score change of each 10-s interval of one offset-free stream, removal's
    window 1 s and 10 s against no removal."""
    import numpy as np

    from harken.agent.sources.dc import DCRemover
    rate = bundle.spec.sample_rate
    x = np.concatenate(clips)
    per = int(round(10.0 / bundle.spec.frame_seconds))

    def scores(y):
        f = extract(y)
        return np.array([scorer.score_logmel(f[i * per:(i + 1) * per])
                         for i in range(len(f) // per)])

    base, out = scores(x), {}
    for window in (1.0, 10.0):
        dc = DCRemover(rate, window)
        y = np.concatenate([dc.push(x[i:i + rate // 10]) for i in range(0, len(x), rate // 10)])
        rel = np.abs(scores(y) - base) / np.abs(base)
        out[window] = {"first": float(rel[0]), "median": float(np.median(rel[1:])),
                       "max": float(rel[1:].max())}
    return out


def push_cost() -> float:
    """CPU microseconds of one 0.1-s push through the default remover, in steady state."""
    import numpy as np

    from bench._common import cpu_seconds
    from harken.agent.sources.dc import DCRemover
    dc = DCRemover(16000)
    chunk = np.random.default_rng(0).standard_normal(1600).astype(np.float32)
    for _ in range(120):
        dc.push(chunk)
    return 1e6 * cpu_seconds(lambda: [dc.push(chunk) for _ in range(100)]) / 100


if __name__ == "__main__":
    main()
