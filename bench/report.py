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


def training_section(r: dict) -> list[str]:
    gpu = r.get("gpu")
    m = r["machine"]
    lines = [f"## Training throughput{' on a GPU machine' if gpu else ''}", "",
             f"`{r['command']}` ({r['when']}) on {m['cores']} cores of {m['cpu']}, "
             f"torch {r['torch']}, {r['cpu_threads']} CPU threads"
             + (f", GPU {gpu}" if gpu else ", no CUDA GPU in this run") + ". Default settings "
             "of each method; one epoch = the AE's vectors of one standard-corpus machine type, "
             "or the classifiers' windows_per_epoch.", "",
             "| method | samples per epoch | CPU samples/s | CPU s/epoch |"
             + (" GPU samples/s | GPU s/epoch | CPU/GPU |" if gpu else ""),
             "|---|---|---|---|" + ("---|---|---|" if gpu else "")]
    for name, row in r["methods"].items():
        line = (f"| {name} | {row['samples_per_epoch']} | {row['cpu']['samples_per_second']:.0f} | "
                f"{row['cpu']['seconds_per_epoch']:.1f} |")
        if gpu and "cuda" in row:
            line += (f" {row['cuda']['samples_per_second']:.0f} | "
                     f"{row['cuda']['seconds_per_epoch']:.2f} | {row['cpu_over_gpu']:.1f} |")
        lines.append(line)
    return lines


def scorers_section(r: dict) -> list[str]:
    lines = ["## Scorers: latency per window", "",
             f"`{r['command']}` ({r['when']}): median and p99 wall time of one model call on one "
             f"window, {r['threads']} thread, {r['repeats']} calls after a warm-up, every "
             "artifact through the agent's own backend (agent/backends.py); torch fp32 is the "
             "BN-folded module the export starts from. CPU share = median x windows per second "
             "of audio at the model's default hop (AE: every frame, MobileNetV2: every 8th).",
             "", "| model | artifact | median ms | p99 ms | file bytes | windows / audio s "
             "| CPU % of one core |", "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        size = "-" if row["size_bytes"] is None else f"{row['size_bytes']:,}"
        lines.append(f"| {row['model']} | {row['artifact']} | {row['median_ms']:.3f} | "
                     f"{row['p99_ms']:.3f} | {size} | {row['windows_per_audio_s']:.2f} | "
                     f"{100 * row['cpu_s_per_audio_s']:.2f} |")
    ms = {(row["model"], row["artifact"]): row["median_ms"] for row in r["rows"]}
    speedups = [f"{model}: ONNX {ms[(model, 'onnx-fp32')] / ms[(model, 'onnx-int8')]:.2f}x, "
                f"TFLite {ms[(model, 'tflite-fp32')] / ms[(model, 'tflite-int8')]:.2f}x"
                for model in dict.fromkeys(m for m, _ in ms)
                if all((model, k) in ms for k in ("onnx-fp32", "onnx-int8", "tflite-fp32",
                                                   "tflite-int8"))]
    lines += ["", "int8 speed-up over fp32 of the same runtime (median; below 1 = int8 is "
              "slower on this CPU): " + "; ".join(speedups) + ". int8's gain on a device is "
              "memory and file size first; its speed depends on the CPU's int8 instructions."]
    return lines


# training-gpu.json: the same script run with --name training-gpu on a machine with a GPU
SECTIONS = {"features": features_section, "scorers": scorers_section,
            "training": training_section,
            "training-gpu": training_section}


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
