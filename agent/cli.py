"""harken: the device agent's command line."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from agent.clitools import command_parser, run_command
from agent.features import PRESETS, FeatureSpecError, LogMelExtractor, preset
from agent.wavio import WavError, read_wav


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("harken")
    except PackageNotFoundError:
        return "unknown"


def cmd_version(args: argparse.Namespace) -> int:
    print(f"harken {_version()}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    """Log-mel features of WAV files with a preset: a check of the front end on site."""
    spec = preset(args.preset)
    extract = LogMelExtractor(spec)
    for path in args.files:
        x, _ = read_wav(path, spec.sample_rate)
        feats = extract(x)
        summary = {"file": path, "preset": spec.name, "seconds": round(x.size / spec.sample_rate, 3),
                   "frames": int(feats.shape[0]), "mels": int(feats.shape[1]),
                   "db_min": round(float(feats.min()), 2), "db_mean": round(float(feats.mean()), 2),
                   "db_max": round(float(feats.max()), 2)}
        if args.save:
            np.save(args.save, feats, allow_pickle=False)
        print(json.dumps(summary))
    if args.spec:
        print(json.dumps(spec.to_dict(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p, sub = command_parser("harken", "Harken device agent.")
    sub.add_parser("version", help="print the version").set_defaults(func=cmd_version)
    f = sub.add_parser("features", help="compute log-mel features of WAV files")
    f.add_argument("files", nargs="+")
    f.add_argument("--preset", choices=sorted(PRESETS), default="dcase2020-ae")
    f.add_argument("--save", help="write the (last file's) features to this .npy")
    f.add_argument("--spec", action="store_true", help="also print the feature spec")
    f.set_defaults(func=cmd_features)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, (WavError, FeatureSpecError, OSError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
