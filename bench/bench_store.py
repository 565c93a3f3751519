"""The feedback store's bytes per day for given bundles: one record per report interval
(agent/sinks/recent.py ``record_dtype``: the fixed part and each statistics vector as
float32), so its size follows from the bundle's bank (which branches it carries, how wide).
bench/bench_wear.py measures the store's growth for one bundle; this says it for each of
the default detector's bundles, whose branches differ by machine type (docs/benchmarks.md
"Wear"). Nothing is run: the record is what the store writes, byte for byte.

    .venv/bin/python bench/bench_store.py runs/new-default/bundles/*
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import bundle_dir, record  # noqa: E402

from harken.agent.model.bundle import open_bundle  # noqa: E402
from harken.agent.sinks.recent import record_dtype  # noqa: E402

INTERVAL_S = 10.0                       # the default decision.interval_s
ROOT = Path(__file__).resolve().parent.parent    # paths recorded relative to it


def layout(bundle) -> list[tuple[str, int]]:
    """The statistics a bundle's rule stores per interval: each branch's vector width (the
    width of its standardisation mean), as the store's layout."""
    arrays = bundle.rule(bundle.sections[0]).arrays
    return [(k[:-len("_mean")], int(len(v))) for k, v in arrays.items()
            if k.endswith("_mean")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", nargs="+", type=bundle_dir)
    args = p.parse_args(argv)
    rows = []
    for folder in args.bundles:
        b = open_bundle(folder)
        lay = layout(b)
        size = record_dtype(lay).itemsize
        shown = folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder
        rows.append({"bundle": str(shown), "model": b.model_id,
                     "statistics": dict(lay), "bytes_per_interval": size,
                     "mb_per_day": round(size * 86400 / INTERVAL_S / 1e6, 2)})
        print(f"{shown}: {size} bytes per interval, {rows[-1]['mb_per_day']} MB per day")
    command = " ".join(["bench/bench_store.py", *sys.argv[1:]])
    print(f"wrote {record('store', command, {'interval_s': INTERVAL_S, 'rows': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
