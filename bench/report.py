"""Writes docs/benchmarks.md from bench/results/*.json (never from typed numbers)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def features_section(r: dict) -> list[str]:
    rt, ratios, diff = r["realtime_factor"], r["ratios"], r["max_abs_diff_db"]
    lines = [
        "## Log-mel front end",
        "",
        f"`{r['command']}` — {r['audio_seconds']:g} s of 16 kHz audio, one thread, median "
        f"CPU time of {r['repeats']} repeats, all extractors in the same run "
        f"({r['when']}).",
        "",
        "| extractor | x real time (audio s per CPU s) |",
        "|---|---|",
        f"| harken batch (`LogMelExtractor`) | {rt['batch']:.0f} |",
        f"| harken streaming, 10 ms chunks (`StreamingLogMel`) | {rt['streaming_10ms']:.0f} |",
        f"| librosa `melspectrogram`, float32 input | {rt['librosa_float32_input']:.0f} |",
        f"| librosa `melspectrogram`, float64 input | {rt['librosa_float64_input']:.0f} |",
        "",
        f"Ratios: batch / librosa (float32 input) = **{ratios['batch_over_librosa_float32']:.2f}**, "
        f"batch / librosa (float64 input) = {ratios['batch_over_librosa_float64']:.2f}, "
        f"streaming / batch = **{ratios['streaming_over_batch']:.2f}**.",
        "",
        f"Largest difference from librosa (float64): batch {diff['batch_vs_librosa_db']:.2g} dB, "
        f"streaming {diff['streaming_vs_librosa_db']:.2g} dB; streaming vs batch "
        f"{diff['streaming_vs_batch_db']:.2g} dB.",
        "",
        "Targets: " + "; ".join(f"{k}: {'met' if ok else '**missed**'}"
                                for k, ok in r["targets_met"].items()) + ".",
    ]
    return lines


SECTIONS = {"features": features_section}


def main() -> None:
    results = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    lines = ["# Benchmarks", "",
             "Written by `bench/run_all` from `bench/results/*.json`; re-run it to refresh. "
             "Ratios are measured side by side in one run, because these machines are noisy.", ""]
    machine = next(iter(results.values()))["machine"] if results else {}
    if machine:
        lines += [f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['os']}, "
                  f"Python {machine['python']}, numpy {machine['numpy']}, scipy {machine['scipy']}.", ""]
    for name, fn in SECTIONS.items():
        if name in results:
            lines += fn(results[name]) + [""]
    out = ROOT / "docs" / "benchmarks.md"
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
