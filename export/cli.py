"""harken-export: turns training runs into device bundles.

Bundle writing and verification arrive with the export issue; today this command
describes a run: what a bundle made from it would carry (method, machine, feature spec,
threshold), so a run can be checked before it is shipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.clitools import command_parser, run_command
from agent.features import FeatureSpec, FeatureSpecError
from training.runs import RunError, find_runs, read_run


def cmd_describe(args: argparse.Namespace) -> int:
    for run_dir in find_runs(Path(args.run)):
        info = read_run(run_dir)
        spec = FeatureSpec.from_dict(info["feature_spec"], f"{run_dir}/run.json")
        summary = {"run": str(run_dir), "method": info["method"], "machine": info["machine"],
                   "sections": info.get("sections"), "feature_preset": spec.name,
                   "window_seconds": round(spec.window_seconds, 3),
                   "threshold": info.get("normal_scores", {}).get("threshold"),
                   "code_version": info.get("code_version")}
        print(json.dumps(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p, sub = command_parser("harken-export", __doc__.splitlines()[0])
    d = sub.add_parser("describe", help="what a run holds, as a bundle would carry it")
    d.add_argument("run", help="a run folder or a folder of runs")
    d.set_defaults(func=cmd_describe)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, (RunError, FeatureSpecError, OSError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
