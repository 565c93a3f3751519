"""A bundle's numbers checked when it is opened, before the first interval
(agent/model/bundle.py, agent/model/rules/, agent/model/scorer.py): arrays finite, of
lengths that agree with each other and with the model's output, std, density and scale
above 0, weights not all 0; array headers read before any data; feature spec sizes
bounded; a threshold used only at the interval length it was fitted at
(docs/reliability.md "Numbers, banks and bundles")."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harken.agent.features import FeatureSpec, FeatureSpecError
from harken.agent.model.bank import load_bank
from harken.agent.model.bundle import BundleError, open_bundle, sha256_file
from harken.agent.model.factory import make_scorer
from harken.agent.sources.wavio import read_wav, write_wav
from harken.testkit.files import write_agent_config

RECORDS = Path(__file__).resolve().parents[1] / "data" / "records"
BANK_V1 = RECORDS / "enrolled-fan-v1.npz"


def _entry(root: Path, path: Path) -> dict:
    return {"path": path.relative_to(root).as_posix(), "size": path.stat().st_size,
            "sha256": sha256_file(path)}


def _write_manifest(root: Path, m: dict) -> None:
    (root / "manifest.json").write_text(json.dumps(m))


def spectral_bundle(general_bundle: Path, out: Path, change=None, extra=None) -> Path:
    """The general bundle made a bundle with its own bank (section 0: the arrays of the
    earlier release's enrolled bank), ``change(arrays)`` applied before they are written;
    ``extra``: more .npy files {name: bytes} listed in the manifest."""
    shutil.copytree(general_bundle, out)
    m = json.loads((out / "manifest.json").read_text())
    arrays, _ = load_bank(BANK_V1)
    arrays = {k: v for k, v in arrays.items() if not k.startswith("raw_")}
    arrays |= {"fusion_weights": np.ones(4), "n_mels": np.asarray(128)}
    if change:
        change(arrays)
    (out / "arrays").mkdir()
    m["arrays"] = {}
    for k, a in arrays.items():
        np.save(out / "arrays" / f"{k}.npy", a)
        m["arrays"][k] = _entry(out, out / "arrays" / f"{k}.npy")
    for k, raw in (extra or {}).items():
        (out / "arrays" / f"{k}.npy").write_bytes(raw)
        m["arrays"][k] = _entry(out, out / "arrays" / f"{k}.npy")
    m["scoring"]["sections"] = {"00": {k: k for k in arrays}}
    del m["enrollment"]
    m["threshold"] = {"value": 9.0, "how": "test", "interval_s": 10.0}
    _write_manifest(out, m)
    return out


def test_a_bundle_with_its_own_bank_opens_and_scores(general_bundle, tmp_path):
    b = open_bundle(spectral_bundle(general_bundle, tmp_path / "b"))
    scorer = make_scorer(b, 0)
    frames = np.random.default_rng(0).normal(-40, 5, size=(320, b.spec.n_features))
    assert np.isfinite(scorer.score_frames(frames)[0])


def _set(name, index, value):
    def change(a):
        a[name] = a[name].astype(np.float64)
        a[name][index] = value
    return change


@pytest.mark.parametrize("change, why", [
    (_set("mel_std", 3, 0.0), "array 'mel_std' must be above 0 everywhere; its smallest value "
                              "is 0"),
    (_set("spectrum_std", 0, -1.0), "array 'spectrum_std' must be above 0"),
    (_set("mel_density", 0, 0.0), "array 'mel_density' must be above 0"),
    (_set("spectrum_fusion", 3, 0.0), "array 'spectrum_fusion' must be above 0"),
    (_set("spectrum_bank", (0, 0), np.nan), "array 'spectrum_bank' holds NaN or infinite values"),
    (_set("mel_mean", 5, np.inf), "array 'mel_mean' holds NaN or infinite values"),
    (lambda a: a.update(fusion_weights=np.zeros(4)),
     "array 'fusion_weights' = [0.0, 0.0, 0.0, 0.0]: expected weights of at least 0 that do "
     "not sum to 0"),
    (lambda a: a.update(fusion_weights=np.ones(3)), "array 'fusion_weights' has 3 values"),
    (lambda a: a.update(mel_mean=a["mel_mean"][:100]), "array 'mel_mean' has 100 values "
                                                       "(2 x n_mels); expected 256"),
    (lambda a: a.update(spectrum_density=a["spectrum_density"][:-1]),
     "array 'spectrum_density' has 7 entries (the rows of spectrum_bank); expected 8"),
    (lambda a: a.update(mel_bank=a["mel_bank"][:, :-1]), "array 'mel_bank' has 255 columns"),
    (lambda a: a.update(n_mels=np.asarray(128.5)), "array 'n_mels' = 128.5; expected one "
                                                   "whole number"),
])
def test_bundle_arrays_that_would_score_nan_or_raise_are_refused_at_load(general_bundle,
                                                                         tmp_path, change, why):
    """Zero std, zero density, NaN, zero fusion weights or arrays of the wrong length were
    accepted at load: a traceback at the first interval, or 'nan normal' for everything."""
    root = spectral_bundle(general_bundle, tmp_path / "b", change)
    with pytest.raises(BundleError) as err:
        open_bundle(root)
    message = str(err.value)
    assert message.startswith(f"{root / 'manifest.json'}: scoring.sections.00: ")
    assert why in message and "\n" not in message


def test_a_model_output_of_the_wrong_width_is_refused_naming_the_file(general_bundle,
                                                                       tmp_path):
    """Arrays for 64 mels against a model that gives the moments of 128: consistent with
    each other, so the bundle opens, but the model's output is refused when the scorer is
    made (run, check-config), before the first interval, naming the model file."""
    def mels64(a):
        for k in ("mel_mean", "mel_std"):
            a[k] = a[k][:128]
        a["mel_bank"] = a["mel_bank"][:, :128]
        a["n_mels"] = np.asarray(64)
    b = open_bundle(spectral_bundle(general_bundle, tmp_path / "b", mels64))
    with pytest.raises(BundleError) as err:
        make_scorer(b, 0)
    assert str(err.value) == (
        f"{b.root / 'model.fp32.onnx'}: output 'moments' has 1282 values per window, but score "
        f"rule 'spectral-knn' with this bundle's arrays needs moments of 1154 values (mean and "
        f"std of 64 mels and 513 spectrum bins) (manifest 'artifacts.onnx-fp32')")


def test_a_reconstruction_of_the_wrong_width_is_refused_naming_the_file(ae_bundle, tmp_path):
    """An ONNX autoencoder whose output is half as wide as its input: before, the residual
    broadcast into an error at the first interval."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["reconstruction"])],
        "half", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 640])],
        [helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, [1, 320])],
        [helper.make_tensor(n, TensorProto.INT64, [1], [v])
         for n, v in (("starts", 0), ("ends", 320), ("axes", 1))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    root = tmp_path / "b"
    root.mkdir()
    onnx.save(model, root / "half.onnx")
    m = json.loads((ae_bundle / "manifest.json").read_text())
    m["artifacts"] = {"onnx-fp32": {**_entry(root, root / "half.onnx"),
                                    "input": {"name": "input", "shape": [1, 640],
                                              "dtype": "float32"},
                                    "outputs": {"reconstruction": {"name": "reconstruction"}}}}
    _write_manifest(root, m)
    b = open_bundle(root)
    with pytest.raises(BundleError, match=r"half\.onnx: output 'reconstruction' has 320 values "
                                          r"per window, but score rule 'mse' with this bundle's "
                                          r"arrays needs a reconstruction of 640 values"):
        make_scorer(b, 0)


def _npy_claiming(shape, descr="<f8") -> bytes:
    import io
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False,
                                             "shape": shape})
    return f.getvalue() + b"\0" * 64


@pytest.mark.parametrize("shape, descr, why", [
    ((10 ** 12,), "<f8", "the header claims (1000000000000,) float64 values (8000000000000 "
                         "bytes); an array here is at most 536870912 bytes"),
    ((1000,), "<f8", "the header claims (1000,) float64 values (8000 bytes) but the file holds "
                     "64 bytes of data"),
    ((8,), "|O", "holds object values; only plain numbers"),
    ((2,), "<U4", "holds <U4 values; only plain numbers"),
])
def test_an_array_header_claiming_too_much_is_refused_before_reading(general_bundle, tmp_path,
                                                                     shape, descr, why):
    """A .npy header claiming 10^12 values raised MemoryError (8 TB asked for)."""
    root = spectral_bundle(general_bundle, tmp_path / "b",
                           extra={"huge": _npy_claiming(shape, descr)})
    with pytest.raises(BundleError) as err:
        open_bundle(root)
    assert str(err.value) == f"{root / 'arrays' / 'huge.npy'}: {why}" or why in str(err.value)
    assert str(err.value).startswith(str(root / "arrays" / "huge.npy"))


def test_a_bank_member_header_claiming_too_much_is_refused(tmp_path):
    import zipfile

    from harken.agent.model.bank import BankError
    path = tmp_path / "enrolled-fan.npz"
    with zipfile.ZipFile(path, "w") as z, np.load(BANK_V1) as old:
        for k in old.files:
            with z.open(f"{k}.npy", "w") as f:
                np.lib.format.write_array(f, old[k])
        z.writestr("mel_extra.npy", _npy_claiming((10 ** 12,)))
    with pytest.raises(BankError, match=r"member 'mel_extra\.npy': the header claims "
                                        r"\(1000000000000,\) float64 values .* enroll again$"):
        load_bank(path)


@pytest.mark.parametrize("field, value", [
    ("sample_rate", 2 ** 31), ("sample_rate", 100), ("n_fft", 2 ** 30), ("win_length", 2 ** 30),
    ("n_mels", 10 ** 6), ("window_frames", 10 ** 7), ("window_hop", 10 ** 7),
])
def test_feature_spec_sizes_are_bounded(ae_bundle, tmp_path, field, value):
    """A feature_spec.sample_rate of 2^31 raised MemoryError (hundreds of GiB asked for)."""
    with pytest.raises(FeatureSpecError, match=f"feature spec field '{field}' = {value}: "
                                               f"expected a whole number from"):
        FeatureSpec(**{field: value, **({"win_length": value} if field == "n_fft" else {})})
    root = tmp_path / "b"
    shutil.copytree(ae_bundle, root)
    m = json.loads((root / "manifest.json").read_text())
    m["feature_spec"][field] = value
    _write_manifest(root, m)
    with pytest.raises(BundleError, match=f"feature_spec: feature spec field '{field}'"):
        open_bundle(root)


def test_a_manifest_naming_an_array_twice_is_refused(general_bundle, tmp_path):
    """JSON keeps the last of two equal keys without a word: which array was meant is
    not clear, so the manifest is refused."""
    root = spectral_bundle(general_bundle, tmp_path / "b")
    text = (root / "manifest.json").read_text()
    entry = json.dumps(json.loads(text)["arrays"]["mel_std"])
    text = text.replace('"arrays": {', f'"arrays": {{"mel_std": {entry}, ', 1)
    (root / "manifest.json").write_text(text)
    with pytest.raises(BundleError, match=r"manifest\.json: not valid JSON \(key 'mel_std' is "
                                          r"given twice in one object\)"):
        open_bundle(root)


# --- a threshold holds for the interval length it was fitted at -------------------------

def harken(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harken.agent.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture
def normal_wav(small_fan, tmp_path):
    """40 s of the fan's normal test clips, one after another."""
    from harken.training.data.corpus import scan
    clips = [c for c in scan(small_fan, ["fan"], "test") if not c.is_anomaly][:4]
    x = np.concatenate([read_wav(c.path, 16000)[0] for c in clips])
    write_wav(tmp_path / "normal.wav", x, 16000)
    return tmp_path / "normal.wav"


def test_a_threshold_fitted_on_10_s_is_not_used_at_2_s(ae_bundle, normal_wav, tmp_path):
    """decision.interval_s = 2 with a bundle whose threshold was fitted on 10-s clips:
    normal audio scored 10-12 against 1.1 and alarmed within a minute, nothing said. Now
    check-config and run refuse in one line saying the three ways out; a calibration at
    2 s, or a threshold set by hand, is used."""
    def cfg(name, **decision):
        return write_agent_config(
            tmp_path / name, agent={"node": "n", "machine": "fan", "state_dir": tmp_path / "st"},
            model={"bundle": ae_bundle, "artifact": "onnx-int8"},
            audio={"source": "file", "file": normal_wav, "realtime": False},
            decision=decision, output={"stats_s": 60})
    two = cfg("two.toml", interval_s=2)
    for command in (["check-config", two], ["run", "--config", two]):
        r = harken(*command, cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert r.stderr.strip().splitlines() == [
            f"harken: error: {ae_bundle / 'manifest.json'}: the bundle's threshold was fitted on "
            f"10-s intervals, but {two}: decision.interval_s = 2: run 'harken calibrate' at "
            f"this interval, set decision.interval_s = 10, or set decision.threshold yourself"]
    assert harken("check-config", cfg("ten.toml", interval_s=10), cwd=tmp_path).returncode == 0
    by_hand = cfg("hand.toml", interval_s=2, threshold=50.0)
    assert harken("check-config", by_hand, cwd=tmp_path).returncode == 0
    r = harken("calibrate", "--config", two, "--no-plot", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = harken("check-config", two, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["resolved"]["threshold_from"].startswith("calibration")


def test_the_exporter_records_the_interval_and_an_old_bundle_is_read_by_its_clip_length(
        ae_bundle, tmp_path):
    """threshold.interval_s when the manifest states it; an older bundle's
    aggregation.interval_s (the exporter wrote the training clips' length there); an
    imported model's threshold with neither: unknown."""
    b = open_bundle(ae_bundle)
    assert b.manifest.threshold_interval_s == 10.0
    root = tmp_path / "b"
    shutil.copytree(ae_bundle, root)
    m = json.loads((root / "manifest.json").read_text())
    m["threshold"]["interval_s"] = 2.0
    _write_manifest(root, m)
    assert open_bundle(root).manifest.threshold_interval_s == 2.0
    del m["threshold"]["interval_s"], m["aggregation"]
    _write_manifest(root, m)
    assert open_bundle(root).manifest.threshold_interval_s is None


def test_a_model_window_is_bounded_as_a_whole():
    """Each size within its range can still multiply into a window of billions of values."""
    with pytest.raises(FeatureSpecError, match=r"a model window of 276832256 values; at most "
                                               r"4194304"):
        FeatureSpec(n_fft=1 << 16, win_length=1 << 16, spectrum=True, window_frames=8192,
                    n_mels=1024, fmax=8000.0)


def test_the_exporter_reads_the_fitted_interval_off_the_training_clips(small_fan, tmp_path):
    """export/bundle.py writes threshold.interval_s from the run's training clips (10 s in
    the small corpus); without the corpus it leaves the field out (None)."""
    from types import SimpleNamespace

    from tests import prebuilt
    prebuilt.workstation_or_skip()
    from harken.export.bundle import _clip_seconds
    info = SimpleNamespace(corpus=SimpleNamespace(root=str(small_fan)), machine="fan")
    assert _clip_seconds(info) == 10.0
    gone = SimpleNamespace(corpus=SimpleNamespace(root=str(tmp_path / "gone")), machine="fan")
    assert _clip_seconds(gone) is None
