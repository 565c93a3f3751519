"""Front-end throughput: seconds of 16 kHz audio per CPU-second, one thread, for the
batch and the streaming (10 ms chunks, default 16-frame groups) log-mel extractors beside
librosa with the same parameters, and the largest dB difference between them.

Then spectral-knn's whole front end beside a bare ``scipy.fft.rfft`` of the same frames
(framed and Hann-windowed beforehand, float32: the least any STFT front end must do): the
log-mel plus 513-bin spectrum alone, and with the window moments and the modulation,
temporal and cepstrum branches' per-window rows and an interval's pooling (what the
agent's rule computes, agent/model/rules/spectral_knn.py). Goal (issue 39): the whole front
end within 3x the bare FFT.

    .venv/bin/python bench/bench_features.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import cpu_seconds, pin_one_thread, record  # noqa: E402

pin_one_thread()

import numpy as np  # noqa: E402


def main() -> None:
    import librosa

    from harken.agent.features import LogMelExtractor, StreamingLogMel, preset

    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    spec = preset("dcase2020-ae")
    rng = np.random.default_rng(0)
    n = int(args.seconds * spec.sample_rate)
    # A machine-like signal: harmonics plus noise, as float32 (what a WAV reader gives).
    t = np.arange(n) / spec.sample_rate
    x = (0.1 * rng.standard_normal(n) + 0.2 * np.sin(2 * np.pi * 120 * t)).astype(np.float32)
    chunk = spec.sample_rate // 100  # 10 ms

    extract = LogMelExtractor(spec)

    def batch():
        return extract(x)

    # The 10 ms chunks are cut before timing: making them is the audio source's work
    # (the ring buffer hands out fresh arrays), not the extractor's.
    chunks = [x[i:i + chunk] for i in range(0, n, chunk)]

    stream = StreamingLogMel(spec)  # built outside the timing, like `extract`

    def streaming():
        out = []
        for c in chunks:
            frames = stream.push(c)
            if frames.shape[0]:
                out.append(frames)
        out.append(stream.finish())  # also resets it for the next repeat
        return np.concatenate(out)

    def librosa_mel(y):
        mel = librosa.feature.melspectrogram(y=y, sr=spec.sample_rate, n_fft=spec.n_fft,
                                             hop_length=spec.hop_length, n_mels=spec.n_mels,
                                             power=spec.power)
        return (20.0 / spec.power * np.log10(mel + spec.log_eps)).T

    x64 = x.astype(np.float64)
    timings = {
        "batch": cpu_seconds(batch, args.repeats),
        "streaming_10ms": cpu_seconds(streaming, args.repeats),
        "librosa_float32_input": cpu_seconds(lambda: librosa_mel(x), args.repeats),
        "librosa_float64_input": cpu_seconds(lambda: librosa_mel(x64), args.repeats),
    }
    rt = {k: args.seconds / v for k, v in timings.items()}
    ref = librosa_mel(x64)
    diff = {"batch_vs_librosa_db": float(np.max(np.abs(batch() - ref))),
            "streaming_vs_librosa_db": float(np.max(np.abs(streaming() - ref))),
            "streaming_vs_batch_db": float(np.max(np.abs(streaming() - batch())))}
    ratios = {"batch_over_librosa_float32": rt["batch"] / rt["librosa_float32_input"],
              "batch_over_librosa_float64": rt["batch"] / rt["librosa_float64_input"],
              "streaming_over_batch": rt["streaming_10ms"] / rt["batch"]}
    worst_db = max(diff["batch_vs_librosa_db"], diff["streaming_vs_librosa_db"])
    targets = {
        "batch >= 1.0x librosa (float32 input, the faster one)":
            ratios["batch_over_librosa_float32"] >= 1.0,
        "streaming (10 ms chunks) >= 0.5x batch": ratios["streaming_over_batch"] >= 0.5,
        "both within 1e-3 dB of librosa": worst_db <= 1e-3,
    }
    for k, v in rt.items():
        print(f"{k:<24} {v:10.0f} x real time  ({timings[k] * 1000:.1f} ms CPU for {args.seconds:g} s)")
    for k, v in {**ratios, **diff}.items():
        print(f"{k:<28} {v:.3g}")
    for k, ok in targets.items():
        print(f"target {'met ' if ok else 'MISSED'}: {k}")
    branches = spectral_front_end(x, args.repeats)
    for k, v in branches.items():
        print(f"{k:<36} {v:.3g}")
    targets["spectral-knn front end with every branch <= 3x a bare rfft of its frames"] = \
        branches["front_end_all_branches_over_rfft"] <= 3.0
    # issue 39's goal read as log-mel + spectrum + the new branches, the window moments left
    # to the model graph that computes them on the device
    targets["log-mel + spectrum + the three frame branches (moments left to the model) <= 3x "
            "a bare rfft"] = branches["front_end_frame_branches_over_rfft"] <= 3.0
    for k in list(targets)[-2:]:
        print(f"target {'met ' if targets[k] else 'MISSED'}: {k}")
    path = record("features", "python bench/bench_features.py --seconds %g" % args.seconds,
                  {"audio_seconds": args.seconds, "repeats": args.repeats, "threads": 1,
                   "realtime_factor": rt, "cpu_seconds": timings, "ratios": ratios,
                   "max_abs_diff_db": diff, "spectral_knn_front_end": branches,
                   "targets_met": targets})
    print(f"recorded {path}")


def spectral_front_end(x: np.ndarray, repeats: int) -> dict[str, float]:
    """CPU seconds of spectral-knn's front end and of its parts, and each over a bare rfft
    of the same frames (one run, one thread)."""
    import scipy.fft

    from harken.agent.features import LogMelExtractor, preset, windows
    from harken.agent.model.rules.spectral_knn import (ALL_BRANCHES, interval_vectors,
                                                       window_evidence, window_moments)
    spec = preset("spectral-knn")
    extract = LogMelExtractor(spec)
    half = spec.n_fft // 2
    padded = np.pad(x, half)
    frames = np.lib.stride_tricks.sliding_window_view(padded, spec.n_fft)[::spec.hop_length]
    hann = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(spec.n_fft) / spec.n_fft)).astype(np.float32)
    framed = np.ascontiguousarray(frames * hann)          # framing is not timed: the FFT alone
    per = int(10 * spec.sample_rate / spec.hop_length)    # frames of a 10-s interval

    def branches(feats, which):
        for i in range(0, len(feats) - per + 1, per):    # 10-s intervals, as the device
            w = windows(feats[i:i + per], spec)
            interval_vectors(window_evidence(window_moments(w), w, spec.n_mels, which),
                             spec.n_mels, spec.n_features, which)

    feats = extract(x)
    parts = {"rfft": lambda: scipy.fft.rfft(framed, axis=1),
             "logmel_spectrum": lambda: extract(x),
             "moments_pooling": lambda: branches(feats, ("mel", "spectrum")),
             **{b: (lambda b=b: branches(feats, (b,))) for b in ("modulation", "temporal",
                                                                   "cepstrum")},
             "all_branches": lambda: branches(feats, ALL_BRANCHES)}
    # interleaved, one call of each part per round (median over rounds): on a shared
    # machine a part timed alone for a while meets other load than the rfft it is divided by
    times: dict[str, list[float]] = {k: [] for k in parts}
    for f in parts.values():
        f()                                              # warm-up
    for _ in range(3 * repeats):
        for k, f in parts.items():
            t0 = time.process_time()
            f()
            times[k].append(time.process_time() - t0)
    t = {k: statistics.median(v) for k, v in times.items()}
    out = {f"{k}_cpu_s": v for k, v in t.items()}
    out["logmel_spectrum_over_rfft"] = t["logmel_spectrum"] / t["rfft"]
    for b in ("moments_pooling", "modulation", "temporal", "cepstrum", "all_branches"):
        out[f"{b}_over_rfft"] = t[b] / t["rfft"]
    out["front_end_all_branches_over_rfft"] = (t["logmel_spectrum"] + t["all_branches"]) / t["rfft"]
    # without the moments, which the bundle's model graph computes on the device
    out["front_end_frame_branches_over_rfft"] = (
        t["logmel_spectrum"] + t["all_branches"] - t["moments_pooling"]) / t["rfft"]
    return out


if __name__ == "__main__":
    main()
