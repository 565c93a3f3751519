"""Scores from the same features on two CPUs (scripts/arm64-check).

A recording's float32 log-mel is not bit-identical on x86 and arm64 (FFT, mel product and
logarithm round differently in the last bit), and an int8 model quantizes its input: a
last-bit difference that lands on a quantization step moves one input value by a whole
step, which a deep network carries to its score. So arm64-check compares twice: the
scores from audio (what a device gives), and the scores from the very same features,
computed once on x86 and fed through each bundle's scorer on both CPUs (what the models
and rules give). The second must agree within the check's tolerance whatever the network.

    python scripts/arm64_same_features.py features BUNDLES OUT.npz WAV...
    python scripts/arm64_same_features.py score BUNDLES FEATURES.npz OUT.json BUNDLE:ARTIFACT...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from harken.agent.features.extract import logmel
from harken.agent.model.bundle import open_bundle
from harken.agent.model.factory import make_scorer
from harken.agent.sources.wavio import read_wav


def features(bundles: Path, out: Path, wavs: list[str]) -> None:
    """Every bundle's log-mel of every WAV in report intervals (as `harken score` cuts
    them), keyed 'bundle|file name|start s'."""
    got = {}
    for folder in sorted(p for p in bundles.iterdir() if (p / "manifest.json").is_file()):
        bundle = open_bundle(folder)
        if bundle.needs_enrollment:
            continue
        spec = bundle.spec
        interval_s = float(bundle.manifest.aggregation.get("interval_s", 10.0))
        step = int(round(interval_s * spec.sample_rate / spec.hop_length))
        for wav in wavs:
            signal, _ = read_wav(wav, spec.sample_rate)
            frames = logmel(signal, spec)
            for start in range(0, max(len(frames) - spec.window_frames, 0) + 1, step):
                got[f"{folder.name}|{Path(wav).name}|{start * spec.hop_length / spec.sample_rate:g}"] \
                    = frames[start:start + step]
    np.savez(out, **got)


def score(bundles: Path, feats: Path, out: Path, pairs: list[str]) -> None:
    """{'bundle__artifact': [{'file', 'score'}, ...]} from the stored features ('file' is
    'name|start s')."""
    stored = np.load(feats)
    result = {}
    for pair in pairs:
        name, artifact = pair.split(":")
        bundle = open_bundle(bundles / name)
        scorer = make_scorer(bundle, bundle.sections[0], artifact)
        result[f"{name}__{artifact}"] = [
            {"file": key.split("|", 1)[1], "score": float(scorer.score_logmel(stored[key]))}
            for key in stored.files if key.split("|", 1)[0] == name]
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "features":
        features(Path(rest[0]), Path(rest[1]), rest[2:])
    elif mode == "score":
        score(Path(rest[0]), Path(rest[1]), Path(rest[2]), rest[3:])
    else:
        sys.exit(f"arm64_same_features: unknown mode {mode!r} (features or score)")
