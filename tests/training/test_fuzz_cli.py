"""Every ``harken-train`` and ``harken-export`` sub-command driven in-process through its
CLI main entry with hostile argument values and damaged files: each ends with exit 0 or 2
(a one-line user error), never a traceback (docs/reliability.md, workstation: the fuzz).

Seeded and bounded: HARKEN_FUZZ_CASES (default 60) cases drawn from
``random.Random(HARKEN_FUZZ_SEED)`` (default 38); a failure prints the seed, the case
number and the command line, so it can be replayed."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tarfile
import traceback
from pathlib import Path

import numpy as np
import pytest

from harken.export import cli as export_cli
from harken.training import cli as train_cli
from tests.training.test_corpus_scan import corpus, name, wav

CASES = int(os.environ.get("HARKEN_FUZZ_CASES", "60"))
SEED = int(os.environ.get("HARKEN_FUZZ_SEED", "38"))

VALUES = ["-1", "0", "1", "nan", "inf", "-inf", "1e309", "abc", "", " ", "99999999999999999999",
          "0x10", "1,2", ",", "fan,,fan", "ü", "\u202e", "%s%n", "-", "--", "3.5", "-0"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Good and damaged inputs, made once: a micro corpus, a spectral-knn run, its
    evaluation and bundle, and copies of each broken in the ways real files are."""
    root = tmp_path_factory.mktemp("fuzz")
    f: dict[str, Path] = {"missing": root / "missing", "empty_dir": root / "empty"}
    f["empty_dir"].mkdir()
    f["text"] = root / "text.txt"
    f["text"].write_text("hello\n")
    f["binary"] = root / "binary.bin"
    f["binary"].write_bytes(np.random.default_rng(0).bytes(3000))
    f["corpus"] = corpus(root / "corpus", train=5, test=3)
    f["corpus_no_train"] = root / "no_train"
    shutil.copytree(f["corpus"] / "fan" / "test", f["corpus_no_train"] / "fan" / "test")
    f["corpus_bad_clip"] = root / "bad_clip"
    shutil.copytree(f["corpus"], f["corpus_bad_clip"])
    (f["corpus_bad_clip"] / "fan" / "train" / name(0)).write_bytes(b"RIFF\0\0")
    wav(f["corpus_bad_clip"] / "fan" / "train" / name(9, label="anomaly"))
    f["wav"] = wav(root / "clip.wav")
    f["wav_header_only"] = root / "header.wav"
    f["wav_header_only"].write_bytes(f["wav"].read_bytes()[:40])
    assert train_cli.main(["train", "--data", str(f["corpus"]), "--out", str(root / "runs"),
                           "--quiet"]) == 0
    f["run"] = root / "runs" / "fan"
    f["runs"] = root / "runs"
    assert train_cli.main(["evaluate", str(f["runs"]), "--out", str(root / "eval"), "--no-plots",
                           "--no-baseline", "--quiet"]) == 0
    f["eval"] = root / "eval"
    assert export_cli.main([str(f["run"]), "--out", str(root / "bundle"), "--formats", "onnx",
                            "--precision", "fp32"]) == 0
    f["bundle"] = root / "bundle"

    def broken_run(key: str, edit) -> None:
        shutil.copytree(f["run"], root / key)
        edit(root / key)
        f[key] = root / key

    def run_json(change):
        def edit(folder: Path) -> None:
            data = json.loads((folder / "run.json").read_text())
            (folder / "run.json").write_text(json.dumps(change(data)))
        return edit

    broken_run("run_number", lambda d: (d / "run.json").write_text("5"))
    broken_run("run_deep", lambda d: (d / "run.json").write_text("[" * 100_000))
    broken_run("run_binary", lambda d: (d / "run.json").write_bytes(b"\xff\xfe\x00"))
    broken_run("run_threshold_x", run_json(lambda j: {**j, "normal_scores": {
        **j["normal_scores"], "threshold": "x"}}))
    broken_run("run_params_bad", run_json(lambda j: {**j, "params": {**j["params"], "density_k": "x"}}))
    broken_run("run_no_method", run_json(lambda j: {k: v for k, v in j.items() if k != "method"}))
    broken_run("run_bank_cut", lambda d: (d / "bank.npz").write_bytes((d / "bank.npz").read_bytes()[:300]))
    broken_run("run_bank_missing", lambda d: (d / "bank.npz").unlink())
    broken_run("run_held_out_bad", lambda d: (d / "held_out_scores.csv").write_text("a,b\nx,y,z\n"))
    for key, text in (("eval_no_machines", '{"official_score": 0.5}'), ("eval_not_json", "{{")):
        shutil.copytree(f["eval"], root / key)
        (root / key / "metrics.json").write_text(text)
        f[key] = root / key
    shutil.copytree(f["bundle"], root / "bundle_bad_manifest")
    (root / "bundle_bad_manifest" / "manifest.json").write_text('{"version": "x"}')
    f["bundle_bad_manifest"] = root / "bundle_bad_manifest"
    with tarfile.open(root / "bundle.tar.gz", "w:gz") as tar:
        tar.add(f["bundle"], arcname="bundle")
    f["bundle_tar"] = root / "bundle.tar.gz"
    f["bundle_tar_cut"] = root / "cut.tar.gz"
    f["bundle_tar_cut"].write_bytes(f["bundle_tar"].read_bytes()[:2000])
    f["verify_dir"] = root / "verify"
    f["verify_dir"].mkdir()
    (f["verify_dir"] / "spectral-knn__fan.json").write_text('[{"artifact": 1}]')
    return f


# What each sub-command takes: positional arguments and options, each with the kinds of
# value drawn for it ("in" / "out" paths from the files above, "value" from VALUES, "flag").
IN_RUNS = ["run", "runs", "run_number", "run_deep", "run_binary", "run_threshold_x", "run_params_bad",
           "run_no_method", "run_bank_cut", "run_bank_missing", "run_held_out_bad", "missing",
           "empty_dir", "text", "binary", "corpus"]
IN_DATA = ["corpus", "corpus_no_train", "corpus_bad_clip", "missing", "empty_dir", "text", "run"]
IN_EVALS = ["eval", "eval_no_machines", "eval_not_json", "missing", "empty_dir", "text", "run"]
IN_BUNDLES = ["bundle", "bundle_bad_manifest", "bundle_tar", "bundle_tar_cut", "missing",
              "empty_dir", "text", "binary", "run"]
OUT = ["new", "new/deeper", "text", "binary", "empty_dir", "run", "missing/x"]

GOOD_RUNS, GOOD_DATA, GOOD_OUT = ["run", "runs"], ["corpus"], ["new", "new/deeper"]
# option -> (good values, hostile values); a path key names one of ``files``
COMMANDS = {
    ("train", "synth"): [("--size", ["tiny"], ["huge", "", "TINY"]), ("--out", GOOD_OUT, OUT),
                         ("--seed", ["0", "3"], VALUES),
                         ("--machines", ["fan"], ["drill", "fan,fan", "", ","]),
                         ("--workers", ["1"], ["0", "-1", "x"]), ("--quiet", "flag", None)],
    ("train", "train"): [("--method", ["spectral-knn", "baseline-knn", "ae"], ["nope", ""]),
                         ("--data", GOOD_DATA, IN_DATA),
                         ("--machines", ["fan"], ["drill", "", ",", "fan,drill"]),
                         ("--out", GOOD_OUT, OUT),
                         ("--set", ["density_k=2", "score=plain"], ["lr=nan", "density_k=0", "hidden=0", "x",
                                                                    "=", "epochs=1e9", "depth=-1", "nope=1",
                                                                    "density_k=100", "threads=-1", "lr=1e30",
                                                                    "score=nope", "density_k=nan"]),
                         ("--seed", ["1"], VALUES), ("--device", ["cpu"], ["cuda:99", "tpu", "", "auto"]),
                         ("--skip-bad-clips", "flag", None), ("--quiet", "flag", None)],
    ("train", "refit"): [("run", GOOD_RUNS, IN_RUNS), ("--quiet", "flag", None)],
    ("train", "methods"): [("--settings", "flag", None)],
    ("train", "evaluate"): [("run", GOOD_RUNS, IN_RUNS), ("--data", GOOD_DATA, IN_DATA),
                            ("--out", GOOD_OUT, OUT), ("--json", "flag", None),
                            ("--no-plots", "flag", None),
                            ("--score", ["fused", "all"], ["nope", "", "knn"]),
                            ("--no-baseline", "flag", None), ("--quiet", "flag", None)],
    ("train", "localize"): [("run", GOOD_RUNS, IN_RUNS),
                            ("clip", ["wav"], ["wav_header_only", "missing", "text"]),
                            ("--out", ["new.png"], OUT)],
    ("train", "report"): [("evaluations", ["eval"], IN_EVALS), ("--data", GOOD_DATA, IN_DATA),
                          ("--out", ["new.md"], OUT), ("--command-line", ["x"], VALUES)],
    ("train", "recording"): [("--data", GOOD_DATA, IN_DATA), ("--machine", ["fan"], ["drill", ""]),
                             ("--section", ["0"], VALUES), ("--domain", ["source"], ["target", "x"]),
                             ("--normal", ["1", "2"], VALUES), ("--faulty", ["1"], VALUES),
                             ("--out", ["new.wav"], OUT), ("--force", "flag", None)],
    ("train", "demo"): [("--out", ["text", "binary"], ["text"]),
                        ("--size", ["tiny"], ["huge", ""]),
                        ("--quiet", "flag", None)],
    ("export", "export"): [("run", ["run"], IN_RUNS), ("--out", GOOD_OUT, OUT),
                           ("--calib", GOOD_DATA, IN_DATA),
                           ("--formats", ["onnx"], ["tflite,onnx", "", "pdf", ","]),
                           ("--precision", ["fp32"], ["int8", "x"]), ("--calib-windows", ["200"], VALUES),
                           ("--calib-method", ["minmax"], ["x"]), ("--int8-io", "flag", None),
                           ("--tar", "flag", None)],
    ("export", "verify"): [("bundle", ["bundle", "bundle_tar"], IN_BUNDLES),
                           ("--data", GOOD_DATA, IN_DATA),
                           ("--run", ["run"], IN_RUNS), ("--max-clips", ["4"], VALUES),
                           ("--threads", ["1"], VALUES), ("--json", "flag", None)],
    ("export", "wrap"): [("model", ["binary"], ["text", "missing", "wav", "empty_dir"]),
                         ("--preset", ["dcase2020-ae"], ["nope", ""]), ("--out", GOOD_OUT, OUT),
                         ("--machine", ["fan"], VALUES), ("--threshold", ["1.5"], VALUES)],
    ("export", "general"): [("--out", ["text", "binary", "run"], ["text"]), ("--tar", "flag", None)],
    ("export", "report"): [("checks", ["verify_dir"], ["missing", "empty_dir", "text"]),
                           ("--results", ["new.md"], ["text", "binary", "missing/x.md"]),
                           ("--command-line", ["x"], VALUES)],
    ("export", "describe"): [("run", GOOD_RUNS, IN_RUNS)],
}
REQUIRED = {"--out", "--data", "--preset", "--machine", "--size", "--machines", "--workers"}
HOSTILE = 0.4           # chance that an option's value is drawn from the hostile ones


def _value(rng: random.Random, good, hostile, files: dict[str, Path], tmp: Path) -> str:
    choice = rng.choice(hostile if rng.random() < HOSTILE else good)
    if choice in files:
        return str(files[choice])
    if choice in OUT or choice.endswith((".md", ".wav", ".png")):
        return str(tmp / choice)
    return choice


def draw(rng: random.Random, files: dict[str, Path], tmp: Path, case: int) -> tuple[str, list[str]]:
    """Case ``case``: the sub-commands in turn (each is driven ``CASES / 16`` times), each
    option left out, given a good value or a hostile one at random."""
    commands = sorted(COMMANDS.items())
    (tool, command), options = commands[case % len(commands)]
    argv = [command]
    for option, good, hostile in options:
        required = not option.startswith("-") or option in REQUIRED
        if not required and rng.random() < 0.5:
            continue
        if good == "flag":
            argv.append(option)
            continue
        value = _value(rng, good, hostile, files, tmp)
        argv += [value] if not option.startswith("-") else [option, value]
    if command == "train" and "ae" in argv and not any(a.startswith("epochs") for a in argv):
        argv += ["--set", "epochs=1", "--set", "hidden=8"]   # a hostile round, not a long training
    return tool, argv


def run_one(tool: str, argv: list[str], capsys) -> tuple[int | None, str, str | None]:
    main = train_cli.main if tool == "train" else export_cli.main
    try:
        code = main(argv)
    except SystemExit as exc:                 # argparse: 2 for a usage error, 0 for --help
        code = exc.code if isinstance(exc.code, int) else 2
    except BaseException:                     # noqa: BLE001 - what this test looks for
        return None, capsys.readouterr().err, traceback.format_exc()
    return code, capsys.readouterr().err, None


def test_every_command_survives_hostile_arguments_and_files(files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)               # relative outputs ('abc', 'docs/results.md') land here
    rng = random.Random(SEED)
    failures = []
    for case in range(CASES):
        work = tmp_path / f"case{case}"
        work.mkdir()
        (work / "empty").mkdir()
        tool, argv = draw(rng, files, work, case)
        code, err, trace = run_one(tool, argv, capsys)
        if os.environ.get("HARKEN_FUZZ_SHOW"):
            print(f"{case}: harken-{tool} {' '.join(argv)}\n  -> {code}: "
                  f"{(err.strip().splitlines() or [''])[-1][:150]}", file=sys.__stderr__)
        bad = trace is not None or code not in (0, 2) or "Traceback" in err
        if not bad:
            continue
        where = f"case {case} (HARKEN_FUZZ_SEED={SEED}): harken-{tool} {' '.join(argv)}"
        failures.append(
            f"{where}\n  exit {code}; {(trace or err).strip().splitlines()[-1] if (trace or err) else ''}")
    assert not failures, "\n".join(failures)


def test_a_bundle_tarball_cut_short_is_one_line(files, capsys):
    code, err, trace = run_one("export", ["verify", str(files["bundle_tar_cut"]), "--data",
                                          str(files["corpus"])], capsys)
    assert trace is None and code == 2 and "Traceback" not in err, trace


@pytest.mark.parametrize("tool, argv, says", [
    ("export", ["report", "{verify_dir}"], "not a 'harken-export verify --json' output"),
    ("train", ["recording", "--data", "{corpus}", "--machine", "fan", "--normal", "0", "--out", "x.wav"],
     "--normal must be at least 1"),
    ("train", ["recording", "--data", "{corpus}", "--machine", "fan", "--section", "-1", "--out", "x.wav"],
     "--section must be at least 0"),
])
def test_what_the_fuzz_found_is_one_line(files, tmp_path, capsys, monkeypatch, tool, argv, says):
    monkeypatch.chdir(tmp_path)
    code, err, trace = run_one(tool, [a.format(**{k: str(v) for k, v in files.items()}) for a in argv],
                               capsys)
    assert trace is None and code == 2 and says in err, trace or err


def test_a_results_page_that_is_not_text_is_one_line(files, tmp_path, capsys):
    good = tmp_path / "checks"
    good.mkdir()
    row = {"artifact": "torch-fp32", "official": 0.7, "spearman": 1.0, "max_rel_error": 0.0,
           "size_bytes": 0, "latency_ms": float("nan")}
    (good / "spectral-knn__fan.json").write_text(json.dumps([row, {**row, "artifact": "onnx-fp32"}]))
    code, err, trace = run_one("export", ["report", str(good), "--results", str(files["binary"])], capsys)
    assert trace is None and code == 2 and "not a markdown (UTF-8 text) file" in err, trace or err


def test_a_machine_named_twice_is_synthesized_once(tmp_path, capsys):
    code, _, trace = run_one("train", ["synth", "--size", "tiny", "--machines", "fan,fan", "--workers", "1",
                                       "--quiet", "--out", str(tmp_path / "c")], capsys)
    assert trace is None and code == 0
    assert len(json.loads((tmp_path / "c" / "corpus.json").read_text())["clips"]) == 36
