"""The models the speed benchmarks run: trained for seconds on a small synthetic corpus in
bench/.cache and exported there (latency does not depend on how well the weights are
trained, and this keeps the benchmarks independent of scripts/make-results)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from bench._common import ROOT
from harken.testkit.data import GENERATIVE

CACHE = ROOT / "bench" / ".cache"
PEERS = ROOT / "tests" / "data" / "peers" / "mlperf-tiny-ad"
TRAIN = ROOT / ".venv" / "bin" / "harken-train"
EXPORT = ROOT / ".venv" / "bin" / "harken-export"
QUICK = ["epochs=1", "windows_per_epoch=128", "kmeans=4"]    # a classifier in seconds
MODELS = {                 # name -> (method, settings for a seconds-long training)
    "spectral-knn": ("spectral-knn", []),
    "ae": ("ae", ["epochs=1"]),
    "mobilenetv2-0.35": ("mobilenetv2", ["width=0.35", *QUICK]),
    "mobilenetv2-0.5": ("mobilenetv2", ["width=0.5", *QUICK]),
    "mobilenetv2-1.0": ("mobilenetv2", ["width=1.0", *QUICK]),
    "mobilenetv2-dual-0.5": ("mobilenetv2-dual", ["width=0.5", *QUICK]),
    "fusion": ("fusion", ["members=spectral-knn,ae-mahalanobis", "ae-mahalanobis.epochs=1"]),
    # the generative detectors with the tests' seconds-long settings (harken/testkit/data.py
    # GENERATIVE): AEGAN-AD's score pinned to d-lof there (a one-epoch run's `auto` pick is
    # float noise), GMGAN's energy rule with 3 mixtures, OEVAE's combined score
    **{name: (name, list(how.settings)) for name, how in GENERATIVE.items()},
}
# the bench corpus's 90 fan clips give AEGAN-AD's 128-frame patches few calibration windows
# from the 40 clips calibration reads: 200 is the least int8 calibration takes (docs/export.md)
EXPORT_ARGS = {"aegan-ad": ["--calib-windows", "200"]}
OUTLIER_TYPE = "valve"     # OEVAE's outlier exposure needs a second machine type in its corpus
# model -> the artifact the agent runs (spectral-knn's graph has no weights: float only)
ARTIFACTS = {"spectral-knn": "tflite-fp32", "mobilenetv2-0.5": "tflite-int8", "ae": "tflite-int8",
             "fusion": "tflite-int8", "mobilenetv2-dual-0.5": "tflite-int8",
             **{name: "tflite-int8" for name in GENERATIVE}}


def export_code() -> str:
    """A digest of the export code: a cached bundle made by other export code (another
    quantization, say) is exported again from its run, so a figure is never timed on a
    model the current code would not make."""
    h = hashlib.sha256()
    for f in sorted((ROOT / "export").rglob("*.py")):
        h.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def sh(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL)


def corpus() -> Path:
    """A small fan corpus (made once): training data for the bench models, and audio."""
    path = CACHE / "corpus"
    if not (path / "corpus.json").is_file():
        sh(TRAIN, "synth", "--size", "small", "--machines", "fan", "--out", path, "--quiet")
    return path


def outlier_corpus() -> Path:
    """The bench corpus's fan beside a tiny corpus's valve (made once, as links, the way
    harken/testkit/data.py builds the tests' one): OEVAE trains this machine type against
    another's clips, so only OEVAE's run reads it."""
    path, other = CACHE / "corpus-oevae", CACHE / f"corpus-tiny-{OUTLIER_TYPE}"
    if not (other / "corpus.json").is_file():
        sh(TRAIN, "synth", "--size", "tiny", "--machines", OUTLIER_TYPE, "--out", other, "--quiet")
    path.mkdir(parents=True, exist_ok=True)
    for machine, root in (("fan", corpus()), (OUTLIER_TYPE, other)):
        link = path / machine
        if not link.is_symlink():
            link.symlink_to(Path("..") / root.name / machine, target_is_directory=True)
    return path


def fan_audio(seconds: int, rate: int = 16000):
    """``seconds`` of normal fan sound at ``rate``: the bench corpus's training clips joined,
    looped when they are shorter."""
    import numpy as np

    from harken.agent.sources.wavio import read_wav
    clips = sorted((corpus() / "fan" / "train").glob("*.wav"))
    return np.resize(np.concatenate([read_wav(c, rate)[0] for c in clips]), seconds * rate)


def bundles(names: list[str] | None = None) -> dict[str, Path]:
    """Trained-for-seconds runs exported to fp32 + int8 bundles (made once, cached), and
    the MLPerf Tiny models wrapped as bundles; ``names`` picks some."""
    out = {}
    for name, (method, sets) in MODELS.items():
        if names is not None and name not in names:
            continue
        run, bundle = CACHE / "runs" / name, CACHE / "bundles" / name
        stamp, code = CACHE / "bundles" / f"{name}.export-code", export_code()
        if not (bundle / "manifest.json").is_file() or not stamp.is_file() \
                or stamp.read_text() != code:
            data = outlier_corpus() if method == "oevae" else corpus()
            if not (run / "fan" / "run.json").is_file():
                sh(TRAIN, "train", "--method", method, "--data", data, "--machine", "fan",
                   "--out", run, "--quiet", "--device", "cpu", "--force",
                   *[a for s in sets for a in ("--set", s)])
            sh(EXPORT, run / "fan", "--calib", data, "--out", bundle, "--precision", "both",
               "--force", *EXPORT_ARGS.get(name, []))
            stamp.write_text(code)
        out[name] = bundle
    for variant in ("fp32", "int8_floatio", "int8_intio"):
        if names is not None and f"mlperf-tiny {variant}" not in names:
            continue
        bundle = CACHE / "bundles" / f"mlperf-tiny-{variant}"
        if not (bundle / "manifest.json").is_file():
            sh(EXPORT, "wrap", PEERS / f"model_ToyCar_{variant}.tflite", "--preset",
               "dcase2020-ae", "--out", bundle, "--machine", "ToyCar")
        out[f"mlperf-tiny {variant}"] = bundle
    return out
