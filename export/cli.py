"""harken-export: turns training runs into device bundles, and checks them.

  harken-export RUN --out BUNDLE [--calib DATA] [--formats onnx,tflite] [--precision int8]
  harken-export verify BUNDLE --data DIR [--json]   (exit 1: an artifact failed)
  harken-export wrap MODEL.tflite|MODEL.onnx --preset dcase2020-ae --out BUNDLE
  harken-export general --out BUNDLE     (a bundle for any machine, enrolled on site)
  harken-export describe RUN
  harken-export report VERIFY_JSON_DIR [--results docs/results.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harken.agent.model.bundle import open_bundle
from harken.common.atomic import building, check_target, repair
from harken.common.clitools import command_parser, run_command
from harken.common.errors import UsageError
from harken.agent.features import FeatureSpec
from harken.training.runs import find_runs, read_run

COMMANDS = ("export", "verify", "wrap", "describe", "report", "general")


def cmd_export(args: argparse.Namespace) -> int:
    from harken.export.bundle import ExportOptions, make_tar, tar_path_of, write_bundle
    from harken.export.graphs import ExportError
    options = ExportOptions(formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
                            precision=args.precision, calibration_windows=args.calib_windows,
                            calibration_method=args.calib_method, int8_io=args.int8_io)
    run = Path(args.run)
    read_run(run)                      # repairs an interrupted replacement of the run first
    if not (run / "run.json").is_file():
        raise ExportError(f"{run}: not a run folder (no run.json); give one machine's run, "
                          f"e.g. runs/ae/fan")
    out = Path(args.out)
    # both targets checked before any work; the bundle is built beside its place and
    # renamed in when whole (a failed export leaves nothing, or the earlier bundle)
    check_target(out, args.force, "--out folder", keep=(run,))
    if args.tar:
        check_target(tar_path_of(out), args.force, "tarball", keep=(run,))
    # with --tar, the tarball is placed first and the folder second (both built whole
    # before): a kill between them is a new tarball beside the old folder, which verify
    # refuses (``check_bundle_and_tarball``; docs/export.md)
    with building(out, force=args.force, what="--out folder", keep=(run,)) as new:
        write_bundle(run, new, Path(args.calib) if args.calib else None, options,
                     args.other_corpus)
        if args.tar:
            make_tar(new, tar_path_of(out), force=args.force, arcname=out.name)
    bundle = open_bundle(out)
    for name, part in (bundle.members.items() if bundle.is_fused else [("", bundle)]):
        for kind, art in part.artifacts.items():
            where = f"{name}/" if name else ""
            print(f"{where + kind:<28} {art.path.name:<20} {art.path.stat().st_size:>10,} bytes")
    print(f"bundle: {out}")
    if args.tar:
        print(f"tarball: {tar_path_of(out)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from harken.export.bundle import check_bundle_and_tarball
    from harken.export.verify import Tolerances, format_checks, verdict_line, verify
    tolerances = Tolerances(official=args.official_tolerance, spearman=args.min_spearman)
    repair(Path(args.bundle))          # an export --force killed mid-swap: the old one back
    check_bundle_and_tarball(Path(args.bundle))
    bundle = open_bundle(Path(args.bundle))
    checks = verify(bundle, Path(args.data), Path(args.run) if args.run else None,
                    args.max_clips, args.threads, progress=not args.json,
                    tolerances=tolerances, other_corpus=args.other_corpus)
    if args.json:
        model = bundle.manifest.model           # export report reads these, not file names
        print(json.dumps([{"method": model.method, "machine": model.machine, **c.to_dict()}
                          for c in checks], indent=2))
    else:
        print(format_checks(checks))
    print(verdict_line(checks, tolerances), file=sys.stderr if args.json else sys.stdout)
    return 1 if any(c.verdict == "FAIL" for c in checks) else 0


def cmd_wrap(args: argparse.Namespace) -> int:
    from harken.export.wrap import wrap
    out = Path(args.out)
    with building(out, force=args.force, what="--out folder", keep=(args.model,)) as new:
        wrap(Path(args.model), args.preset, new, args.machine, args.threshold)
    print(f"bundle: {out}")
    return 0


def cmd_general(args: argparse.Namespace) -> int:
    from harken.export.bundle import ExportOptions, make_tar, tar_path_of, write_general_bundle
    from harken.training.spectral_knn import VARIANT_WEIGHTS
    if args.run and args.variant != "fused":
        raise UsageError(f"--variant {args.variant}: a spectral-knn setting; a general bundle "
                         f"of a learned model (--run) has no variants")
    if not args.run and (args.calib or args.other_corpus):
        raise UsageError("--calib and --other-corpus: int8 calibration of a learned model "
                         "(--run); spectral-knn's general bundle is float and reads no corpus")
    if args.variant not in VARIANT_WEIGHTS:
        raise UsageError(f"--variant {args.variant}: expected one of "
                         f"{', '.join(VARIANT_WEIGHTS)} (the spectral-knn branches and weights "
                         f"'harken enroll' fits)")
    out = Path(args.out)
    check_target(out, args.force, "--out folder")
    if args.tar:
        check_target(tar_path_of(out), args.force, "tarball")
    keep = (Path(args.run),) if args.run else ()
    with building(out, force=args.force, what="--out folder", keep=keep) as new:
        if args.run:          # the general learned model (docs/general-model.md)
            from harken.export.general_bundle import write_embedding_general_bundle
            write_embedding_general_bundle(Path(args.run), new, ExportOptions(
                formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
                precision=args.precision), calib_root=Path(args.calib) if args.calib else None,
                other_corpus=args.other_corpus)
        else:
            write_general_bundle(new, options=ExportOptions(precision="fp32"),
                                 variant=args.variant)
        if args.tar:                   # placed before the folder, as in cmd_export
            make_tar(new, tar_path_of(out), force=args.force, arcname=out.name)
    print(f"bundle: {out} (needs 'harken enroll' on the device before 'harken run')")
    if args.tar:
        print(f"tarball: {tar_path_of(out)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from harken.export.report import export_markdown, load_checks, write_section
    write_section(Path(args.results), export_markdown(load_checks(Path(args.checks)),
                                                      args.command_line))
    print(f"wrote the export section of {args.results}")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    for run_dir in find_runs(Path(args.run)):
        info = read_run(run_dir)
        spec = FeatureSpec.from_dict(info.feature_spec, f"{run_dir}/run.json")
        summary = {"run": str(run_dir), "method": info.method, "machine": info.machine,
                   "sections": info.sections, "feature_preset": spec.name,
                   "window_seconds": round(spec.window_seconds, 3),
                   "threshold": info.normal_scores.threshold,
                   "code_version": info.code_version}
        print(json.dumps(summary))
    return 0


def _tolerance(text: str) -> float:
    """A verdict tolerance: a finite number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number from 0 to 1")
    return value


MAX_THREADS = 64     # more inference threads than any workstation has cores only thrash


def _count(low: int, high: int | None):
    """An argparse type: a whole number from ``low`` to ``high`` (None: no upper bound)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number {span}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p, sub = command_parser("harken-export", __doc__.splitlines()[0])
    e = sub.add_parser("export", help="a training run -> a bundle (the default command)")
    e.add_argument("run", help="one machine's run folder (harken-train train --out)")
    e.add_argument("--out", required=True, help="new bundle folder")
    e.add_argument("--calib", help="corpus whose TRAINING clips calibrate int8 "
                   "(default: the run's own corpus)")
    e.add_argument("--formats", default="onnx,tflite", help="onnx, tflite or both (default)")
    e.add_argument("--precision", default="int8", choices=("int8", "fp32", "both"),
                   help="int8 artifacts, fp32 ones or both; the ONNX fp32 model is always "
                        "written as the size and accuracy reference (default int8)")
    e.add_argument("--calib-windows", type=int, default=300,
                   help="calibration windows (>= 200; default 300)")
    e.add_argument("--calib-method", default="minmax", choices=("minmax", "entropy", "percentile"),
                   help="onnxruntime calibration method (default minmax)")
    e.add_argument("--int8-io", action="store_true",
                   help="TFLite int8 input/output (scales in the manifest); default float I/O")
    e.add_argument("--tar", action="store_true", help="also write BUNDLE.tar.gz for the device")
    e.add_argument("--force", action="store_true",
                   help="replace a bundle (and tarball) already there (by default refused)")
    e.add_argument("--other-corpus", action="store_true",
                   help="calibrate int8 on a corpus other than the run's (--calib), on purpose")
    e.set_defaults(func=cmd_export)
    v = sub.add_parser("verify", help="score test clips with torch fp32 and every artifact")
    v.add_argument("bundle")
    v.add_argument("--data", required=True, help="corpus with labelled test clips")
    v.add_argument("--run", help="the torch run (default: the one the manifest names)")
    v.add_argument("--max-clips", type=_count(0, None), default=0, metavar="N",
                   help="score only N test clips, spread over the set (default 0: all)")
    v.add_argument("--threads", type=_count(1, MAX_THREADS), default=1, metavar="N",
                   help=f"inference threads, 1 to {MAX_THREADS} (default 1)")
    v.add_argument("--json", action="store_true", help="print JSON instead of the table")
    v.add_argument("--official-tolerance", type=_tolerance, default=0.01, metavar="D",
                   help="an artifact passes when its official score is within D of torch "
                        "fp32's (default 0.01)")
    v.add_argument("--min-spearman", type=_tolerance, default=0.99, metavar="R",
                   help="... and its clip scores' Spearman correlation with torch fp32's is "
                        "at least R (default 0.99)")
    v.add_argument("--other-corpus", action="store_true",
                   help="verify on a corpus other than the run's, on purpose")
    v.set_defaults(func=cmd_verify)
    w = sub.add_parser("wrap", help="a bundle around a model trained elsewhere")
    w.add_argument("model", help=".tflite or .onnx file")
    w.add_argument("--preset", required=True, help="what the model expects (dcase2020-ae)")
    w.add_argument("--out", required=True, help="new bundle folder")
    w.add_argument("--machine", default="unknown", help="machine type the model watches")
    w.add_argument("--threshold", type=float, help="decision threshold, if known")
    w.add_argument("--force", action="store_true", help="replace a bundle already there")
    w.set_defaults(func=cmd_wrap)
    g = sub.add_parser("general", help="a bundle for any machine: no reference bank; "
                       "'harken enroll' learns one on site")
    g.add_argument("--out", required=True, help="new bundle folder")
    g.add_argument("--run", help="a 'harken-train general' run: its embedding network "
                   "(default: spectral-knn's statistics, no run)")
    g.add_argument("--formats", default="onnx", help="with --run: onnx, tflite or onnx,tflite")
    g.add_argument("--precision", default="int8", choices=("int8", "fp32", "both"),
                   help="with --run: int8 (default), fp32 or both")
    g.add_argument("--calib", help="with --run: corpus whose TRAINING clips calibrate int8 "
                   "(default: the run's own corpus)")
    g.add_argument("--other-corpus", action="store_true",
                   help="with --run: calibrate int8 on a corpus other than the run's, on purpose")
    g.add_argument("--tar", action="store_true", help="also write BUNDLE.tar.gz for the device")
    g.add_argument("--variant", default="fused",
                   help="spectral-knn score variant whose branches 'harken enroll' fits and "
                        "weighs: fused (default), all, stats, mel, modulation ... "
                        "(docs/architecture.md)")
    g.add_argument("--force", action="store_true",
                   help="replace a bundle (and tarball) already there (by default refused)")
    g.set_defaults(func=cmd_general)
    r = sub.add_parser("report", help="the export section of docs/results.md from verify "
                       "--json outputs named <method>__<machine>.json")
    r.add_argument("checks", help="folder of verify JSON files")
    r.add_argument("--results", default="docs/results.md", help="page to update")
    r.add_argument("--command-line", default="scripts/make-results",
                   help="the command named on the page as the source of the figures")
    r.set_defaults(func=cmd_report)
    d = sub.add_parser("describe", help="what a run holds, as a bundle would carry it")
    d.add_argument("run", help="a run folder or a folder of runs")
    d.set_defaults(func=cmd_describe)
    return p


def _first_positional(argv: list[str], parser: argparse.ArgumentParser | None = None
                      ) -> int | None:
    """Where the first argument that is neither a top-level option nor an option's value
    stands (the options that take a value are read off ``parser``)."""
    parser = parser or build_parser()
    valued = {s for a in parser._actions if a.option_strings and a.nargs != 0
              for s in a.option_strings}
    i = 0
    while i < len(argv):
        if argv[i] in valued:
            i += 2
        elif argv[i].startswith("-"):
            i += 1
        else:
            return i
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    first = _first_positional(argv, parser)
    if first is not None and argv[first] not in COMMANDS and "-h" not in argv \
            and "--help" not in argv:
        argv.insert(first, "export")                    # harken-export RUN ... = export RUN
    return run_command(parser, argv)       # HarkenError, OSError: exit 2


if __name__ == "__main__":
    sys.exit(main())
