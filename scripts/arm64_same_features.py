"""Features and scores to compare two CPUs with (scripts/arm64-check).

A recording's float32 log-mel is not bit-identical on x86 and arm64 (the FFT, the mel
product and the logarithm round differently in the last bit), and an int8 model quantizes
its input: a last-bit difference that lands on a quantization step moves one input value
by a whole step, which a deep network carries to its score. So arm64-check takes the
comparison apart: the features themselves (each CPU's, compared), and the scores of the
very same features on both CPUs, once with x86's and once with arm64's (what the models
and rules give, whatever the network: these must agree to the check's tolerance).

The features are cut into consecutive stretches of one report interval's frames from the
file's start (the last, shorter one included); `harken score` also removes a DC offset
and drops a short tail, so these are not its scores, only the same ones on both CPUs.

    python scripts/arm64_same_features.py features BUNDLES OUT.npz WAV [WAV ...]
    python scripts/arm64_same_features.py score BUNDLES FEATURES.npz OUT.json BUNDLE:ARTIFACT ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from harken.agent.features.extract import logmel
from harken.agent.model.bundle import open_bundle
from harken.agent.model.factory import make_scorer
from harken.agent.sources.wavio import read_wav
from harken.common.errors import HarkenError


def features(bundles: Path, out: Path, wavs: list[str]) -> None:
    """Every bundle's log-mel of every WAV in report-interval stretches, keyed
    'bundle|file name|start s'."""
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
                key = f"{folder.name}|{Path(wav).name}|{start * spec.hop_length / spec.sample_rate:g}"
                got[key] = frames[start:start + step]
    if not got:
        raise SystemExit(f"arm64_same_features: no features from {bundles} and {len(wavs)} file(s)")
    np.savez(out, **got)


def score(bundles: Path, feats: Path, out: Path, pairs: list[str]) -> None:
    """{'bundle__artifact': [{'file': 'name|start s', 'score'}, ...]} of the stored features."""
    stored = np.load(feats)
    result = {}
    for pair in pairs:
        name, _, artifact = pair.partition(":")
        if not artifact:
            raise SystemExit(f"arm64_same_features: {pair!r}: expected BUNDLE:ARTIFACT")
        bundle = open_bundle(bundles / name)
        scorer = make_scorer(bundle, bundle.sections[0], artifact)
        result[f"{name}__{artifact}"] = [
            {"file": key.split("|", 1)[1], "score": float(scorer.score_logmel(stored[key]))}
            for key in stored.files if key.split("|", 1)[0] == name]
    out.write_text(json.dumps(result, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("features")
    f.add_argument("bundles", type=Path)
    f.add_argument("out", type=Path)
    f.add_argument("wavs", nargs="+")
    s = sub.add_parser("score")
    s.add_argument("bundles", type=Path)
    s.add_argument("features", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("pairs", nargs="+", metavar="BUNDLE:ARTIFACT")
    args = parser.parse_args()
    try:
        if args.mode == "features":
            features(args.bundles, args.out, args.wavs)
        else:
            score(args.bundles, args.features, args.out, args.pairs)
    except (HarkenError, OSError, KeyError, ValueError) as exc:
        # a missing or unreadable file, a bundle the agent refuses, features of another
        # run: one line for arm64-check's log, which says which step failed
        raise SystemExit(f"arm64_same_features {args.mode}: {exc}") from None


if __name__ == "__main__":
    main()
