"""What resampling a 48-kHz or 44.1-kHz input to a 16-kHz model costs (docs/agent.md "Other
sample rates"): CPU ms per second of input audio for a whole file (agent/sources/resample.py
``resample_poly`` with its Kaiser low-pass), for scipy's default filter beside it (what it
replaced), and for the microphone's streaming resampler fed 10-ms chunks. Measured side by
side in one run, one thread; the median of ``--repeats`` timings.

    .venv/bin/python bench/bench_resample.py [--seconds 60] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import pin_one_thread, positive, record  # noqa: E402


def cpu_ms(work, repeats: int) -> float:
    """Median process CPU time of ``work()`` in ms."""
    times = []
    for _ in range(repeats):
        t = time.process_time()
        work()
        times.append(1e3 * (time.process_time() - t))
    return sorted(times)[len(times) // 2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=positive, default=60, help="length of the test signal")
    p.add_argument("--repeats", type=positive, default=5)
    args = p.parse_args()
    pin_one_thread()
    import numpy as np
    import scipy.signal

    from harken.agent.sources.resample import StreamResampler, ratio, resample_poly

    rows = []
    rng = np.random.default_rng(0)
    for rate in (48000, 44100):
        x = rng.standard_normal(rate * args.seconds).astype(np.float32) * 0.1
        up, down = ratio(rate, 16000)
        chunk = rate // 100

        def stream() -> None:
            s = StreamResampler(rate, 16000)
            for i in range(0, len(x), chunk):
                s.push(x[i:i + chunk])

        per_s = 1.0 / args.seconds
        row = {"rate": rate,
               "file_ms_per_s": round(per_s * cpu_ms(lambda: resample_poly(x, up, down),
                                                      args.repeats), 2),
               "scipy_default_ms_per_s": round(per_s * cpu_ms(
                   lambda: scipy.signal.resample_poly(x, up, down), args.repeats), 2),
               "stream_10ms_chunks_ms_per_s": round(per_s * cpu_ms(stream, args.repeats), 2)}
        rows.append(row)
        print(f"{rate} Hz -> 16 kHz, CPU ms per second of audio: file {row['file_ms_per_s']}"
              f" (scipy's default filter {row['scipy_default_ms_per_s']}), stream of 10-ms "
              f"chunks {row['stream_10ms_chunks_ms_per_s']}")
    path = record("resample", " ".join(["bench/bench_resample.py", *sys.argv[1:]]),
                  {"seconds": args.seconds, "repeats": args.repeats, "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
