"""The typed bundle manifest (agent/model/manifest.py): one schema for the writer and the reader,
errors that name the field, unknown fields kept for newer exporters."""

import json

import pytest

from harken.agent.model.bundle import BundleError, read_manifest
from harken.agent.features import preset
from harken.agent.model.manifest import Manifest


def _manifest() -> dict:
    return {"schema_version": 1,
            "model": {"id": "ae-fan-1234", "machine": "fan", "sections": [0, 1]},
            "feature_spec": preset("dcase2020-ae").to_dict(),
            "scoring": {"rule": "mse", "sections": {"00": {}, "01": {}}},
            "threshold": {"value": 1.5, "how": "gamma"},
            "artifacts": {"onnx-int8": {"path": "m.onnx", "size": 10, "sha256": "ab",
                                        "input": {"name": "x", "shape": [1, 640],
                                                  "dtype": "float32"},
                                        "outputs": {"reconstruction": {"name": "y"}}}},
            "a_later_field": {"kept": True}}


def _read(tmp_path, data):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data))
    return read_manifest(path)


def test_a_manifest_reads_typed_and_writes_back_what_it_was_given(tmp_path):
    m = _read(tmp_path, _manifest())
    assert m.model.machine == "fan" and m.model.sections == [0, 1]
    assert m.artifacts["onnx-int8"].input.shape == [1, 640] and m.threshold.value == 1.5
    again = json.loads(m.to_json())
    assert again == _manifest()                      # no nulls added, later fields kept


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["model"].pop("machine"), r"manifest\.json: model: field 'machine' is missing"),
    (lambda d: d["model"].update(sections="0"), r"model: field 'sections' .*got '0'"),
    (lambda d: d["artifacts"]["onnx-int8"]["input"].update(dtype="int4"),
     r"artifacts\.onnx-int8\.input: field 'dtype' .*'float32' or 'int8'"),
    (lambda d: d["artifacts"]["onnx-int8"].update(size="10"),
     r"artifacts\.onnx-int8: field 'size' .*integer"),
    (lambda d: d.update(schema_version=2),
     r"field 'schema_version' is 2; this agent reads version 1 \(update the agent or re-export\)"),
    (lambda d: d.pop("threshold"), r"manifest\.json: field 'threshold' is missing"),
    (lambda d: d["model"].update(sections=[]), r"model: field 'sections'"),
    (lambda d: d["threshold"].update(value=float("nan")), r"threshold: field 'value'"),
    (lambda d: d["threshold"].update(value=float("inf")), r"threshold: field 'value'"),
    (lambda d: d["threshold"].update(value=True), r"threshold: field 'value'"),
    (lambda d: d["threshold"].update(value="0.5"), r"threshold: field 'value'"),
])
def test_a_bad_manifest_is_refused_naming_the_field(tmp_path, edit, message):
    data = _manifest()
    edit(data)
    with pytest.raises(BundleError, match=message):
        _read(tmp_path, data)


def test_a_manifest_that_is_not_an_object_is_refused(tmp_path):
    with pytest.raises(BundleError, match="expected a JSON object, got list"):
        _read(tmp_path, [1, 2])
    assert Manifest.model_validate(_manifest()).scoring.rule == "mse"


def test_a_hostile_manifest_is_refused_without_a_traceback_or_reading_it_whole(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="nested too deeply"):
        read_manifest(path)
    with open(path, "wb") as f:                      # 2 MiB: refused by its size alone
        f.write(b" " * (2 << 20))
    with pytest.raises(BundleError, match="2097152 bytes; a manifest is at most 1048576"):
        read_manifest(path)


def test_sections_that_are_not_numbers_are_refused_naming_the_field(tmp_path):
    data = _manifest()
    data["model"]["sections"] = ["a"]
    with pytest.raises(BundleError, match=r"model\.sections: field '0' .*integer.*'a'"):
        _read(tmp_path, data)


def _fused() -> dict:
    data = _manifest()
    data |= {"scoring": {"rule": "fused", "sections": {}}, "artifacts": {},
             "fusion": {"members": [{"name": "a", "path": "members/a", "weight": 1.0,
                                     "manifest_sha256": "00"},
                                    {"name": "b", "path": "members/b", "weight": 0.5,
                                     "manifest_sha256": "11"}],
                        "standardise": {"00": {"a": [0.0, 1.0], "b": [1.0, 2.0]},
                                        "01": {"a": [0.0, 1.0], "b": [1.0, 2.0]}}}}
    return data


def _int8(d):
    d["artifacts"]["onnx-int8"]["input"].update(dtype="int8", scale=0.1)


@pytest.mark.parametrize("base, edit, message", [
    (_manifest, lambda d: d["artifacts"].update(x=d["artifacts"]["onnx-int8"]),
     r"manifest\.json: artifacts: unknown artifact kind 'x'; known: \['onnx-fp32'"),
    (_manifest, lambda d: d["artifacts"]["onnx-int8"]["outputs"].update(vibes={}),
     r"artifacts\.onnx-int8\.outputs: unknown output 'vibes'; known: \['reconstruction'"),
    (_manifest, _int8, r"artifacts\.onnx-int8\.input: field 'zero_point' is missing \(int8 input\)"),
    (_manifest, lambda d: d["scoring"].update(rule="vibes"),
     r"manifest\.json: field 'scoring\.rule' is 'vibes'; this agent knows \['mse'"),
    (_manifest, lambda d: d["scoring"].update(rule="logit"),
     r"artifacts\.onnx-int8\.outputs has \['reconstruction'\]; scoring rule 'logit' needs 'logits'"),
    (_manifest, lambda d: d.update(artifacts={}), "field 'artifacts' lists no model"),
    (_manifest, lambda d: d["scoring"]["sections"]["01"].update(bank="bank_01"),
     r"scoring\.sections\.01\.bank names array 'bank_01', which is not in 'arrays'"),
    (_manifest, lambda d: d.update(outputs=["vibes"]), r"outputs: field '0' input should be"),
    (_fused, lambda d: d["fusion"]["members"][1].update(name="a"),
     r"fusion\.members\[1\]: member name 'a' given twice"),
    (_fused, lambda d: [m.update(weight=0.0) for m in d["fusion"]["members"]],
     "fusion.members: the weights sum to 0"),
    (_fused, lambda d: d["fusion"]["standardise"]["01"].pop("b"), "fusion.standardise.01 has no 'b'"),
    (_fused, lambda d: d["fusion"]["standardise"]["00"]["a"].__setitem__(1, -1.0),
     r"fusion\.standardise\.00\.a must be a finite mean and a positive std, got \[0\.0, -1\.0\]"),
])
def test_what_the_manifest_alone_says_is_checked_by_the_model(tmp_path, base, edit, message):
    """Kinds, outputs, int8 quantization, the rule and its output, the arrays a section
    names and a fused bundle's members: refused on reading, in one line naming the field."""
    data = base()
    edit(data)
    with pytest.raises(BundleError, match=message) as err:
        _read(tmp_path, data)
    assert "\n" not in str(err.value)


def test_a_fused_manifest_and_an_int8_input_with_its_quantization_are_accepted(tmp_path):
    assert _read(tmp_path, _fused()).fusion.members[1].weight == 0.5
    data = _manifest()
    data["artifacts"]["onnx-int8"]["input"].update(dtype="int8", scale=0.1, zero_point=-3)
    assert _read(tmp_path, data).artifacts["onnx-int8"].input.zero_point == -3


def _general() -> dict:
    data = _manifest()
    data["enrollment"] = {"required": True, "density_k": 4, "weights": [1.0, 1.0, 1.0, 1.0]}
    return data


@pytest.mark.parametrize("base, edit, message", [
    (_general, lambda d: d["enrollment"].update(weights=[0.0] * 4),
     r"enrollment\.weights: the weights sum to 0"),
    (_general, lambda d: d["enrollment"].update(weights=[1.0, float("nan"), 1.0, 1.0]),
     r"enrollment\.weights: field '1' input should be a finite number"),
    (_general, lambda d: d["enrollment"].update(weights=[1.0, -1.0, 1.0, 1.0]),
     r"enrollment\.weights: field '1' input should be greater than or equal to 0"),
    (_general, lambda d: d["enrollment"].update(weights=[1.0]), r"enrollment: field 'weights'"),
    (_general, lambda d: d["enrollment"].update(density_k=0), r"enrollment: field 'density_k'"),
    (_fused, lambda d: d["fusion"]["members"][0].update(weight=float("inf")),
     r"fusion\.members\.0: field 'weight' input should be a finite number"),
    (_fused, lambda d: d["fusion"]["members"][0].update(weight=float("nan")),
     r"fusion\.members\.0: field 'weight'"),
    (_manifest, lambda d: d["artifacts"]["onnx-int8"]["input"].update(
        dtype="int8", scale=0.0, zero_point=0), r"input: field 'scale' input should be greater than 0"),
    (_manifest, lambda d: d["artifacts"]["onnx-int8"]["input"].update(
        dtype="int8", scale=float("nan"), zero_point=0), r"input: field 'scale'"),
    (_manifest, lambda d: d["artifacts"]["onnx-int8"]["input"].update(shape=[1, 0]),
     r"input\.shape: field '1' input should be greater than or equal to 1"),
    (_manifest, lambda d: d["artifacts"]["onnx-int8"].update(size=-5),
     r"artifacts\.onnx-int8: field 'size' input should be greater than or equal to 0"),
    (_manifest, lambda d: d["artifacts"]["onnx-int8"].update(size=3 << 30),
     r"artifacts\.onnx-int8: field 'size' input should be less than or equal to 1073741824"),
    (_manifest, lambda d: d["threshold"].update(interval_s=0), r"threshold: field 'interval_s'"),
    (_manifest, lambda d: d["threshold"].update(interval_s=float("nan")),
     r"threshold: field 'interval_s'"),
])
def test_every_number_the_manifest_states_is_finite_and_in_range(tmp_path, base, edit, message):
    """Zero or NaN fusion weights, a zero int8 scale, a negative size: accepted before,
    and every score was then NaN (which compares as "normal") or the first interval raised."""
    data = base()
    edit(data)
    with pytest.raises(BundleError, match=message) as err:
        _read(tmp_path, data)
    assert "\n" not in str(err.value)
