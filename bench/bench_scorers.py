"""Scorer latency per window at one thread, for every model the device can run, in one run:
the dense AE and MobileNetV2 at widths 0.35 / 0.5 / 1.0 as torch fp32, ONNX fp32, ONNX int8,
TFLite int8 (and fp32), through the agent's own backends; spectral-knn's float graph, the
dual-input MobileNetV2, the generative detectors' device graphs (AEGAN-AD, GMGAN, OEVAE:
the graph's call only, not the numpy rule after it); and the MLPerf Tiny reference
anomaly-detection models (tests/data/peers) wrapped as bundles. A fused bundle has no graph
of its own (its members are rows here or are timed end to end by bench_agent.py).
Also file sizes and the real-time factor: CPU seconds per second of audio at the default hop.

The models are trained for one short epoch on a small synthetic corpus in bench/.cache and
exported there: latency does not depend on how well the weights are trained, and this keeps
the benchmark independent of scripts/make-results.

    .venv/bin/python bench/bench_scorers.py [--repeats 300]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import pin_one_thread, record  # noqa: E402
from bench._models import CACHE, bundles  # noqa: E402

pin_one_thread()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from harken.agent.model.bundle import open_bundle  # noqa: E402
from harken.agent.features import windows  # noqa: E402
from harken.agent.model.scorer import BundleScorer, model_input  # noqa: E402


def percentiles(fn, repeats: int) -> tuple[float, float]:
    """Median and p99 wall milliseconds of ``fn`` after a warm-up."""
    for _ in range(20):
        fn()
    times = np.empty(repeats)
    for i in range(repeats):
        t = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t
    return float(np.median(times) * 1e3), float(np.percentile(times, 99) * 1e3)


def torch_latency(run_dir: Path, x: np.ndarray, repeats: int) -> tuple[float, float]:
    from harken.export.graphs import load_graph
    graph = load_graph(run_dir)        # BN folded, as exported
    t = torch.from_numpy(x.reshape(graph.input_shape).copy())
    with torch.inference_mode():
        return percentiles(lambda: graph.module(t), repeats)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=300)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    for name, path in bundles().items():
        bundle = open_bundle(path)
        if bundle.is_fused:   # its members are models of their own; bench_agent's fusion record
            print(f"{name}: a fused bundle, timed end to end by bench_agent.py --model {name}")
            continue
        spec = bundle.spec
        # a real-shaped window of log-mel values in the range the model was calibrated on
        logmel = rng.normal(-40, 10, size=(spec.window_frames + 8, spec.n_features)).astype(np.float32)
        window = windows(logmel, spec)[0]
        per_second = spec.sample_rate / spec.hop_length / spec.window_hop   # windows per s
        arts = {}
        if not name.startswith("mlperf"):
            run = CACHE / "runs" / name / "fan"
            arts["torch-fp32"] = (torch_latency(run, window, args.repeats), None)
        for kind, art in sorted(bundle.artifacts.items()):
            scorer = BundleScorer(bundle, bundle.sections[0], kind, threads=1)
            x = model_input(window, art.input_shape)
            arts[kind] = (percentiles(lambda: scorer.backend.run(x), args.repeats),
                          art.path.stat().st_size)
        for kind, ((median, p99), size) in arts.items():
            rows.append({"model": name, "artifact": kind, "median_ms": median, "p99_ms": p99,
                         "size_bytes": size, "windows_per_audio_s": per_second,
                         "cpu_s_per_audio_s": median * per_second / 1e3})
            print(f"{name:<22} {kind:<12} {median:7.3f} ms  p99 {p99:7.3f} ms  "
                  f"{'' if size is None else f'{size:>10,} B'}  "
                  f"{median * per_second / 1e3:.4f} CPU s per audio s")
    figures = {"repeats": args.repeats, "threads": 1, "rows": rows}
    print(f"wrote {record('scorers', 'bench/bench_scorers.py', figures)}")


if __name__ == "__main__":
    main()
