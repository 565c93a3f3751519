"""Third-party import: the MLPerf Tiny anomaly-detection reference models, wrapped into
bundles and scored through the agent's own scorer on the real ToyCar log-mel, must give the
published scores. The files are a verbatim copy of the MLPerf Tiny reference models (MIT /
Apache-2.0, see tests/data/peers/mlperf-tiny-ad/README) kept here so that a clean clone
can run this."""

from pathlib import Path

import numpy as np
import pytest

from harken.agent.model.bundle import open_bundle, sha256_file
from harken.agent.features import windows
from harken.agent.model.scorer import BundleScorer
from harken.export.cli import main as export_main

# its module-scoped fixtures are costly to build: under xdist one worker runs the whole file
pytestmark = pytest.mark.xdist_group("test_wrap_mlperf")

PEERS = Path(__file__).resolve().parents[1] / "data" / "peers" / "mlperf-tiny-ad"
LOGMEL = "normal_id_01_00000000_logmel_200x128_f32le.bin"


def test_peer_files_are_the_published_ones():
    """The sha256 of each file against the table in the peer README."""
    readme = (PEERS / "README.md").read_text()
    for name in [LOGMEL, "model_ToyCar_fp32.tflite", "model_ToyCar_int8_floatio.tflite",
                 "model_ToyCar_int8_intio.tflite"]:
        assert f"`{name}`" in readme and f"`{sha256_file(PEERS / name)}`" in readme, name


@pytest.fixture(scope="module")
def toycar_logmel():
    x = np.fromfile(PEERS / LOGMEL, dtype="<f4")
    assert x.size == 200 * 128
    return x.reshape(200, 128)


@pytest.mark.parametrize("model, expected, tolerance, kind", [
    ("model_ToyCar_fp32.tflite", 9.70711, 1e-3, "tflite-fp32"),       # published TFLite fp32
    ("model_ToyCar_int8_floatio.tflite", 10.26, 0.02, "tflite-int8"),  # published int8 10.2603
    ("model_ToyCar_int8_intio.tflite", 10.26, 0.02, "tflite-int8"),
])
def test_mlperf_tiny_models_score_as_published(model, expected, tolerance, kind, toycar_logmel,
                                               tmp_path, capsys):
    out = tmp_path / "bundle"
    assert export_main(["wrap", str(PEERS / model), "--preset", "dcase2020-ae", "--out", str(out),
                        "--machine", "ToyCar"]) == 0
    bundle = open_bundle(out)
    assert list(bundle.artifacts) == [kind]
    assert bundle.threshold is None                   # nobody calibrated it yet
    scorer = BundleScorer(bundle, section=0)
    evidence = scorer.evidence(windows(toycar_logmel, bundle.spec))
    assert evidence.shape == (196, 1)                 # 200 frames -> 196 five-frame vectors
    assert scorer.score_logmel(toycar_logmel) == pytest.approx(expected, abs=tolerance)


def test_int8_io_scales_come_from_the_model(tmp_path):
    out = tmp_path / "b"
    export_main(["wrap", str(PEERS / "model_ToyCar_int8_intio.tflite"), "--preset", "dcase2020-ae",
                 "--out", str(out)])
    art = open_bundle(out).artifacts["tflite-int8"]
    assert art.input_dtype == "int8"
    assert art.input_quant == pytest.approx((0.3910152316, 89))
    assert art.outputs["reconstruction"]["scale"] == pytest.approx(0.3644984663)
    assert art.outputs["reconstruction"]["zero_point"] == 96


def test_wrap_refuses_what_it_cannot_use(tmp_path, capsys):
    model = PEERS / "model_ToyCar_fp32.tflite"
    assert export_main(["wrap", str(model), "--preset", "mobilenetv2", "--out",
                        str(tmp_path / "a")]) == 2
    assert "unknown preset 'mobilenetv2'" in capsys.readouterr().err
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a model at all")
    assert export_main(["wrap", str(junk), "--preset", "dcase2020-ae", "--out",
                        str(tmp_path / "b")]) == 2
    assert f"{junk}: not a TFLite model" in capsys.readouterr().err
