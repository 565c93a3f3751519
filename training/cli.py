"""harken-train: synthesize corpora, train scorers, evaluate them with the DCASE metrics."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from harken.common.atomic import building, check_target
from harken.common.clitools import command_parser, run_command
from harken.common.errors import UsageError
from harken.training.method import Configurable, Refittable
from harken.training.data.corpus import machine_types, scan_corpus
from harken.training.runs import find_runs, record_training_time


def _machines(arg: str | None) -> list[str] | None:
    return list(dict.fromkeys(m.strip() for m in arg.split(",") if m.strip())) if arg else None


def cmd_synth(args: argparse.Namespace) -> int:
    from harken.training.synth.corpus import SIZES, synthesize
    t0 = time.monotonic()
    root = synthesize(args.out, args.size, args.seed, tuple(_machines(args.machines) or ()) or None,
                      args.workers, progress=not args.quiet, real_dir=getattr(args, "real_sounds", None))
    spec = SIZES[args.size]
    real = f"; real sounds from {args.real_sounds}" if getattr(args, "real_sounds", None) else ""
    print(f"wrote the {args.size} corpus ({', '.join(machine_types(root))}; "
          f"{spec.sections} sections; {spec.clip_seconds:g} s clips{real}) to {root} "
          f"in {time.monotonic() - t0:.0f} s")
    return 0


# the command line as given, for --nproc to hand to each process (training/distributed.py)
_argv: list[str] = []
# set by torch's launcher (torchrun) in each process it starts
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def _without_nproc(argv: list[str]) -> list[str]:
    """``argv`` less its --nproc (as argparse reads it: any prefix, ``--np 2``, ``--nproc=2``)."""
    out, skip = [], False
    for item in argv:
        name = item.split("=", 1)[0]
        if skip:
            skip = False
        elif len(name) > 2 and "--nproc".startswith(name):
            skip = "=" not in item
        else:
            out.append(item)
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from harken.training import distributed
    from harken.training.methods import make_method, settings
    overrides = list(args.set or [])
    known = settings(args.method)
    for key, value in (("seed", args.seed), ("device", args.device)):
        if value is None or value == "":
            continue
        if key in known:
            overrides.append(f"{key}={value}")
        else:       # spectral-knn, baseline-knn: no network, nothing random
            print(f"harken-train: {args.method} has no '{key}' setting (it trains no "
                  f"network); --{key} ignored", file=sys.stderr)
    method = make_method(args.method, overrides)          # bad settings fail before any work
    device = None
    if isinstance(method, Configurable) and hasattr(method.config, "device"):
        from harken.training.trainer import pick_device
        device = pick_device(method.config.device)
    nproc, under = getattr(args, "nproc", None), distributed.launched()
    if under and nproc is not None:
        raise UsageError(f"--nproc {nproc}: this process already runs under torchrun "
                         f"(WORLD_SIZE={os.environ['WORLD_SIZE']}); give the process count to "
                         "torchrun alone")
    if nproc is None:       # a hand-set torchrun environment that cannot work: one line
        distributed.check_env()
    if nproc is not None or under:
        distributed.check_method(args.method)
    batch_size = getattr(getattr(method, "config", None), "batch_size", None)
    if nproc is not None:
        distributed.check_nproc(nproc, device)
        distributed.check_batch(batch_size, nproc, f"--nproc {nproc}")
    elif under:
        world = int(os.environ["WORLD_SIZE"])
        distributed.check_batch(batch_size, world, f"WORLD_SIZE={world}")
    ranks = distributed.start(device) if under else None
    writer = ranks is None or ranks.writer
    machines = _machines(args.machines) or machine_types(args.data)
    # every run folder checked before any work: one already there is refused (--force:
    # replaced); each is built beside its place and renamed in when done (docs/architecture.md)
    corpus = (args.data, *(Path(args.data) / m for m in machines))  # never replaced
    targets = {m: check_target(Path(args.out) / m, args.force, "--out folder", keep=corpus)
               for m in machines} if writer else {}
    if nproc is not None:       # the same command on nproc processes, through torch's launcher
        return distributed.launch(_without_nproc(_argv), nproc)
    try:
        _train_machines(args, method_overrides=overrides, machines=machines, targets=targets,
                        ranks=ranks, corpus=corpus)
    except RuntimeError as exc:
        if not distributed.lost_peer(exc):
            raise
        raise distributed.TrainingFailed(distributed.lost_line(exc)) from None
    if ranks is not None:
        distributed.stop()
    return 0


def _train_machines(args: argparse.Namespace, method_overrides: list[str], machines: list[str],
                    targets: dict, ranks, corpus: tuple) -> None:
    """Train and write each machine type's run (the writer), or train its share (the
    other ranks)."""
    from harken.training import distributed
    from harken.training.methods import make_method
    overrides, writer = method_overrides, ranks is None or ranks.writer
    training_id = uuid.uuid4().hex[:12]     # shared by the runs of this command (evaluate)
    for machine in machines:
        found = scan_corpus(args.data, [machine], split="train",
                            skip_bad=getattr(args, "skip_bad_clips", False))
        clips = found.clips
        if not writer:          # trains its share of every batch; rank 0 writes the run
            with tempfile.TemporaryDirectory() as scratch:
                try:
                    make_method(args.method, overrides).train(clips, Path(scratch) / machine,
                                                              progress=False)
                except distributed.NotTheWriter:
                    continue
            raise distributed.TrainingFailed(f"{args.method} {machine}: trained on rank "
                                             f"{ranks.rank} without the distributed loop")
        found.log()
        run_dir = Path(args.out) / machine
        t0 = time.monotonic()
        with building(targets[machine], force=args.force, what="--out folder",
                      keep=corpus) as new:
            info = make_method(args.method, overrides).train(clips, new,
                                                             progress=not args.quiet)
            info.corpus.scan = found.summary()        # what the scan passed over, and why
            _record_scan_in_members(new, info)
            info.training_id = training_id
            record_training_time(new, info, time.monotonic() - t0)
        hist = info.history
        spread = (f" x {_count(hist['distributed']['world_size'], 'process', 'processes')}"
                  if hist and hist.get("distributed") else "")
        trained = (f", {_count(len(hist['train_loss']), 'epoch')} on {hist['device']}{spread}, "
                   "best epoch "
                   f"{hist['best_epoch'] + 1}" if hist else "")
        print(f"{args.method} {machine}: trained on {len(clips)} clips in "
              f"{time.monotonic() - t0:.1f} s{trained} -> {run_dir} "
              f"(threshold {info.normal_scores.threshold:.4g})")


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def cmd_general(args: argparse.Namespace) -> int:
    from harken.training.general import cmd_general as run
    return run(args)


def cmd_refit(args: argparse.Namespace) -> int:
    import shutil

    from harken.training.methods import method_class
    from harken.training.runs import check_corpus, read_run
    runs = find_runs(Path(args.run))
    here = Path.cwd().resolve()
    for run in runs:        # a run is replaced whole, so the shell must not stand inside it
        if here == run.resolve() or run.resolve() in here.parents:
            raise UsageError(f"{run}: refit replaces the run folder whole and the current folder "
                             f"is inside it ({here}); run refit from another folder (cd "
                             f"{run.resolve().parent})")
    for run in runs:
        info = read_run(run)
        cls = method_class(info.method)
        if not issubclass(cls, Refittable):
            raise UsageError(f"{run}: {cls.name} has no score state to refit (retrain instead)")
        # refit reads the corpus run.json names (it has no --data nor --other-corpus)
        check_corpus(run, info, flag=None, data_flag=None)
        # refitted in a copy that replaces the run when done: never half old, half new
        with building(run, force=True) as new:
            new.rmdir()
            shutil.copytree(run, new, symlinks=True)
            info = cls.refit(new, progress=not args.quiet)
        print(f"{run}: bank and normal statistics refitted "
              f"(threshold {info.normal_scores.threshold:.4g})")
    return 0


def cmd_localize(args: argparse.Namespace) -> int:
    from harken.training.localize import localize
    out = localize(Path(args.run), Path(args.clip), Path(args.out))
    print(f"wrote {out}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from harken.training.methods import METHODS, settings
    for name, cls in sorted(METHODS.items()):
        print(f"{name:<16} {cls.summary}")
        print(f"{'':<16} score rules: {', '.join(cls.score_rules)}")
        if args.settings:
            for key, value in settings(name).items():
                print(f"{'':<18}{key} = {value}")
    if not args.settings:
        print("\n'harken-train methods --settings' lists what 'train --set KEY=VALUE' can change")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from harken.training.evaluate import comparison_table, evaluate, evaluate_rules, format_table
    from harken.training.runs import read_run
    runs = find_runs(Path(args.run))
    out = Path(args.out) if args.out else Path(args.run) / "eval"
    data = Path(args.data) if args.data else None
    other = args.other_corpus
    # built beside its place and renamed in when whole: an interrupted evaluation leaves
    # the earlier one as it was, never its metrics beside new result files
    with building(out, force=args.force, what="--out folder",
                  keep=(*runs, *([data] if data else []))) as new:
        if args.score == "all":
            evs = evaluate_rules(runs, new, data, progress=not args.quiet,
                                 plots=not args.no_plots, other_corpus=other)
        else:
            ev = evaluate(runs, new, data, progress=not args.quiet, plots=not args.no_plots,
                          rule=args.score, other_corpus=other)
            baseline = None
            if not args.no_baseline and read_run(runs[0]).method != "baseline-knn":
                baseline = _baseline_beside(runs, new / "baseline-knn", data, args.quiet, other)
    if args.score == "all":
        if args.json:
            print(json.dumps({r: ev.to_dict() for r, ev in evs.items()}, indent=2))
        else:
            print(f"{'score rule':<12} {'official':>8}   " + " ".join(
                f"{m:>9}" for m in next(iter(evs.values())).machine_scores()))
            for rule, ev in evs.items():
                print(f"{rule:<12} {ev.official:>8.4f}   " + " ".join(
                    f"{v:>9.4f}" for v in ev.machine_scores().values()))
            print(f"one folder of result files, metrics and ROC plots per rule in {out}")
        return 0
    if args.json:
        result = ev.to_dict()
        if baseline:
            result["baseline-knn"] = baseline.to_dict()
        print(json.dumps(result, indent=2))
    else:
        print(format_table(ev))
        if baseline:
            print("\nbeside baseline-knn on the same data (hmean per machine type):")
            print(comparison_table(ev, baseline))
        if other:
            print("evaluated on another corpus than the runs were trained on, on purpose "
                  "(--other-corpus; recorded in metrics.json)")
        print(f"result files, metrics.csv, metrics.json and ROC plots in {out}")
    return 0


def _record_scan_in_members(run_dir: Path, info) -> None:
    """A fusion's members trained here read the fusion's clips: each records the same scan,
    so that a member read on its own (export of the fusion, refit) leaves out what
    training did. A member copied in from its own training keeps its own record."""
    from harken.training.runs import read_run, save_run
    for member in info.members or []:
        member_info = read_run(run_dir / member.run)
        if getattr(member_info.corpus, "scan", None) is None:
            member_info.corpus.scan = info.corpus.scan
            save_run(run_dir / member.run, member_info)


def _baseline_beside(runs: list[Path], out: Path, data: Path | None, quiet: bool,
                     other_corpus: bool = False):
    """Trains baseline-knn on the runs' training data (seconds) and evaluates it the same way."""
    from harken.training.baselines import KnnBaseline
    from harken.training.evaluate import evaluate
    from harken.training.runs import check_corpus, read_run, run_training_clips, save_run
    knn_runs = []
    for run in runs:
        info = read_run(run)
        root = Path(check_corpus(run, info, data, other_corpus)["path"])
        clips = run_training_clips(root, info, skip_bad=other_corpus)
        knn_dir = out / "runs" / info.machine
        baseline = KnnBaseline().train(clips, knn_dir, progress=not quiet)
        skipped = getattr(info.corpus, "scan", None)
        if skipped is not None:           # the clips it left out, so its corpus checks out
            baseline.corpus.scan = skipped
            save_run(knn_dir, baseline)
        knn_runs.append(knn_dir)
    return evaluate(knn_runs, out, data, progress=not quiet, plots=False,
                    other_corpus=other_corpus)


def cmd_report(args: argparse.Namespace) -> int:
    from harken.training.evaluate import read_result_scores
    from harken.training.report import load_evaluation, results_markdown
    evaluations, clip_scores, given = {}, {}, {}
    for item in args.evaluations:
        label, _, path = item.rpartition("=")
        label = label or Path(path).name
        if label in given:
            raise UsageError(f"report: label {label!r} given twice ({given[label]} and {path}); "
                             f"give each evaluation its own label")
        given[label] = path
    _check_report_out(Path(args.out), [Path(p) for p in given.values()])
    for label, path in given.items():
        evaluations[label] = load_evaluation(Path(path))
        if Path(path).is_dir():
            clip_scores[label] = read_result_scores(Path(path))
    corpus = {}
    if args.data and (Path(args.data) / "corpus.json").is_file():
        from harken.common.readers import read_json_object
        corpus = read_json_object(Path(args.data) / "corpus.json", "a synthetic corpus's corpus.json",
                                  {"clips": list})
        if not all(isinstance(c, dict) for c in corpus["clips"]):
            raise UsageError(f"{Path(args.data) / 'corpus.json'}: field 'clips' should list objects")
    text = results_markdown(evaluations, corpus, args.command_line, clip_scores)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    return 0


def _check_report_out(out: Path, evaluations: list[Path]) -> None:
    """The page never lands on or inside an evaluation (its metrics.json, result files or
    folder would no longer be the ones the evaluation wrote: docs/reliability.md)."""
    where = out.resolve()
    if where.is_dir():
        raise UsageError(f"--out {out}: a folder; give a markdown file name")
    given = {e.parent if e.is_file() else e for e in (Path(p).resolve() for p in evaluations)}
    for folder in where.parents:
        if folder in given or (folder / "metrics.json").is_file():
            raise UsageError(f"--out {out}: inside the evaluation folder {folder}; write the "
                             f"page outside it")


def cmd_recording(args: argparse.Namespace) -> int:
    from harken.training.data.recording import normal_then_faulty
    out, data = Path(args.out), Path(args.data)
    if out.resolve().is_relative_to(data.resolve()):
        raise UsageError(f"--out {out}: inside the corpus it reads ({data}); write the recording "
                         f"outside it")
    if (out.exists() or out.is_symlink()) and not getattr(args, "force", False):
        raise UsageError(f"--out {out}: already there; pass --force to replace it")
    if out.is_dir():
        raise UsageError(f"--out {out}: a folder; give a WAV file name")
    info = normal_then_faulty(data, args.machine, args.section, out,
                              args.normal, args.faulty, args.domain)
    print(json.dumps({k: v for k, v in info.items() if not k.endswith("_clips")}))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The quick start: a small corpus, the naive baseline, its DCASE evaluation."""
    out = Path(args.out)
    corpus = out / "corpus"
    if not (corpus / "corpus.json").is_file():
        cmd_synth(argparse.Namespace(out=corpus, size=args.size, seed=0, machines=None,
                                     workers=None, quiet=args.quiet))
    runs = out / "runs" / "baseline-knn"
    # the demo done again replaces its own runs and evaluation
    cmd_train(argparse.Namespace(method="baseline-knn", data=corpus, machines=None, out=runs,
                                 set=None, seed=None, device=None, quiet=args.quiet, force=True))
    return cmd_evaluate(argparse.Namespace(run=runs, out=out / "eval" / "baseline-knn", data=corpus,
                                           json=False, no_plots=False, score=None,
                                           no_baseline=True, quiet=args.quiet, force=True,
                                           other_corpus=False))


def build_parser() -> argparse.ArgumentParser:
    from harken.training.methods import DEFAULT_METHOD, METHODS
    from harken.training.synth.corpus import SIZES
    p, sub = command_parser("harken-train", __doc__)

    s = sub.add_parser("synth", help="write the synthetic machine corpus (DCASE 2023 layout)")
    s.add_argument("--size", choices=list(SIZES), default="standard")
    s.add_argument("--out", required=True, help="corpus folder to write")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--machines", help="comma-separated subset of machine types")
    s.add_argument("--real-sounds", metavar="DIR",
                   help="mix real backgrounds and events from DIR into every clip "
                        "(scripts/fetch-sounds; docs/corpus.md)")
    s.add_argument("--workers", type=int, help="processes (default: all cores, at most 8)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_synth)

    t = sub.add_parser("train", help="train a method on each machine type of a corpus")
    t.add_argument("--method", choices=sorted(METHODS), default=DEFAULT_METHOD,
                   help=f"what to train (default: {DEFAULT_METHOD}; docs/results.md says why)")
    t.add_argument("--data", required=True, help="DCASE-format corpus folder")
    t.add_argument("--machines", "--machine", dest="machines",
                   help="machine type, or comma-separated types (default: all in the corpus)")
    t.add_argument("--out", required=True, help="folder for the runs (one per machine type)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change a setting (repeatable); 'harken-train methods --settings' lists them")
    t.add_argument("--seed", type=int, help="random seed (same as --set seed=N)")
    t.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    t.add_argument("--nproc", type=int, metavar="N",
                   help="train on N processes through torch's launcher (torchrun) with "
                        "DistributedDataParallel: one per GPU (NCCL), or CPU processes (gloo); "
                        "network methods only (docs/training.md 'Training on several GPUs')")
    t.add_argument("--force", action="store_true",
                   help="replace a run folder that is already there (by default refused)")
    t.add_argument("--skip-bad-clips", action="store_true",
                   help="leave out train clips labelled anomalous and damaged WAVs (named in "
                        "the log, counted in run.json) instead of refusing the corpus")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("general", help="train the general model (mobilenetv2-dual) once across "
                       "random machines and the corpus's types (docs/general-model.md)")
    g.add_argument("--data", required=True, help="DCASE-format corpus folder (its training clips)")
    g.add_argument("--machines", help="comma-separated types of --data (default: all)")
    g.add_argument("--out", required=True, help="the run folder to write")
    g.add_argument("--random-machines", type=int,
                   help="random machine instances (same as --set random_machines=N; 0: the "
                        "corpus's types only)")
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change a setting (repeatable); 'harken-train methods --settings'")
    g.add_argument("--seed", type=int, help="random seed (same as --set seed=N)")
    g.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    g.add_argument("--force", action="store_true", help="replace a run folder already there")
    g.add_argument("--skip-bad-clips", action="store_true",
                   help="leave out train clips labelled anomalous and damaged WAVs")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=cmd_general)

    rf = sub.add_parser("refit", help="rebuild a classifier run's embedding bank and threshold "
                                      "from its training clips, without retraining")
    rf.add_argument("run", help="a run folder, or a folder of runs")
    rf.add_argument("--quiet", action="store_true")
    rf.set_defaults(func=cmd_refit)

    ms = sub.add_parser("methods", help="list the methods, their score rules and settings")
    ms.add_argument("--settings", action="store_true", help="also list every setting's default")
    ms.set_defaults(func=cmd_methods)

    e = sub.add_parser("evaluate", help="score test clips and print the DCASE metrics")
    e.add_argument("run", help="a run folder, or a folder of runs")
    e.add_argument("--data", help="corpus folder (default: the one the run was trained on)")
    e.add_argument("--out", help="where result files go (default: RUN/eval)")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.add_argument("--no-plots", action="store_true", help="skip the ROC PNGs")
    e.add_argument("--score", help="score rule (e.g. mse, mahalanobis, logit, embedding; "
                                   "default: the run's), or 'all': every rule of the method, "
                                   "one sub-folder each, from one pass over the test clips")
    e.add_argument("--no-baseline", action="store_true",
                   help="do not train and show baseline-knn beside the run")
    e.add_argument("--force", action="store_true",
                   help="replace an evaluation folder that is already there (by default refused)")
    e.add_argument("--other-corpus", action="store_true",
                   help="evaluate on a corpus other than the one the run was trained on, on "
                        "purpose (recorded in metrics.json); by default refused")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    lo = sub.add_parser("localize", help="draw where a clip departs from normal (AEGAN-AD run): "
                        "query, reconstruction, mean training spectrogram, difference map")
    lo.add_argument("run", help="an aegan-ad run folder (one machine type)")
    lo.add_argument("clip", help="WAV file to look at")
    lo.add_argument("--out", required=True, help="PNG to write")
    lo.set_defaults(func=cmd_localize)

    r = sub.add_parser("report", help="write a results page (markdown) from evaluations")
    r.add_argument("evaluations", nargs="+", metavar="[LABEL=]EVAL_DIR",
                   help="folders holding metrics.json, optionally labelled")
    r.add_argument("--data", help="the corpus, to describe it on the page")
    r.add_argument("--out", required=True, help="markdown file to write")
    r.add_argument("--command-line", default="scripts/make-results",
                   help="the command to name as the page's source")
    r.set_defaults(func=cmd_report)

    r = sub.add_parser("recording", help="a WAV of one machine going from normal to faulty, "
                       "stitched from labelled test clips")
    r.add_argument("--data", required=True, help="corpus folder")
    r.add_argument("--machine", required=True)
    r.add_argument("--section", type=int, default=0)
    r.add_argument("--domain", choices=("source", "target"), default="source")
    r.add_argument("--normal", type=int, default=6, help="normal clips first (default 6)")
    r.add_argument("--faulty", type=int, default=6, help="then anomalous clips (default 6)")
    r.add_argument("--out", required=True, help="WAV file to write (outside the corpus)")
    r.add_argument("--force", action="store_true", help="replace --out if it is already there")
    r.set_defaults(func=cmd_recording)

    d = sub.add_parser("demo", help="synthesize a small corpus, train and evaluate the baseline")
    d.add_argument("--out", default="demo", help="folder for corpus, runs and results")
    d.add_argument("--size", choices=list(SIZES), default="small")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


def _only_train(args: argparse.Namespace) -> int:
    raise UsageError(f"'{args.command}' runs in one process; under torchrun only 'train' "
                     "(--nproc) trains across processes")


def main(argv: list[str] | None = None) -> int:
    from harken.training.allocator import keep_freed_memory
    global _argv
    keep_freed_memory()
    _argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if all(k in os.environ for k in LAUNCHER_ENV):     # one of torchrun's processes
        parser.prog = f"harken-train [rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}]"
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if name != "train":
                        sub.set_defaults(func=_only_train)
    return run_command(parser, argv)       # HarkenError, OSError: exit 2


if __name__ == "__main__":
    sys.exit(main())
