"""The generative detectors' bundles refused when they open, in one line naming the array or
output, where they used to open and then score nonsense quietly (docs/export.md "Refusals
when a generative bundle opens"):
a model whose joined outputs have the right total but the wrong split, arrays that are each
finite but overflow together, an aegan-d-maha precision that is not a precision, an
aegan-d-knn bank that is not of unit rows, aegan-d-lof densities that do not belong to its
bank, and banks far larger than a section's training clips give."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from harken.agent.model.bundle import BundleError, open_bundle
from harken.agent.model.rules.aegan import MAX_LOF_ROWS, AeganDKnn, AeganDLof, AeganDMaha, \
    AeganXL2, AeganZL2
from harken.agent.model.rules.base import MAX_BANK_ROWS, RuleError
from harken.agent.model.rules.gmgan import GmganLatentRule, GmmEnergyRule, LatentLdnRule
from harken.agent.model.rules.oevae import OevaeBetaRule
from harken.agent.model.scorer import BundleScorer, check_outputs
from harken.testkit.bundles import array_of, copied, replace_array

pytestmark = pytest.mark.xdist_group("test_generative_refusals")


class Widths:
    """A stand-in backend whose outputs have the given widths (values 0.01 each)."""
    name = "fake"

    def __init__(self, **widths: int) -> None:
        self.widths = widths

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {n: np.full((1, w), 0.01, np.float32) for n, w in self.widths.items()}


ARTIFACT = SimpleNamespace(path=Path("/b/model.onnx"), kind="onnx-fp32", input_shape=(1, 64))


# -- #3: each joined output's width, not only their total -----------------------------------
@pytest.mark.parametrize("rule", [GmganLatentRule(), AeganZL2()])
def test_a_latent_and_re_encoding_of_unequal_widths_are_refused(rule):
    check_outputs(Widths(latent=16, latent_aux=16), ARTIFACT, rule)        # honest: opens
    with pytest.raises(BundleError) as e:
        check_outputs(Widths(latent=14, latent_aux=18), ARTIFACT, rule)
    msg = str(e.value)
    assert "/b/model.onnx" in msg and "'latent' 14" in msg and "'latent_aux' 18" in msg
    assert "\n" not in msg


@pytest.fixture(scope="module")
def oevae(generative_bundle):
    return generative_bundle("oevae")


def test_an_oevae_manifest_with_its_outputs_swapped_is_refused(oevae, tmp_path):
    b = copied(oevae, tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    for entry in m["artifacts"].values():
        out = entry["outputs"]
        out["embedding"], out["latent"] = out["latent"], out["embedding"]
    (b / "manifest.json").write_text(json.dumps(m))
    bundle = open_bundle(b)
    with pytest.raises(BundleError, match=r"'embedding' \d+, 'latent' \d+ values per window.*"
                                          r"output_widths"):
        BundleScorer(bundle, 0, "onnx-fp32")


def test_an_oevae_model_whose_split_differs_from_output_widths_is_refused(oevae):
    rule = open_bundle(oevae).rule(0)
    e, z = (int(v) for v in rule.arrays["output_widths"])
    check_outputs(Widths(embedding=e, latent=z), ARTIFACT, rule)
    with pytest.raises(BundleError, match=f"'embedding' {e - 8}, 'latent' {z + 8}"):
        check_outputs(Widths(embedding=e - 8, latent=z + 8), ARTIFACT, rule)


# -- #5: arrays that are each finite but give a non-finite score -----------------------------
def test_oevae_stats_with_a_denormal_std_are_refused_at_open(oevae, tmp_path):
    b = copied(oevae, tmp_path / "b")
    replace_array(b, "score_stats_00", array_of(b, "score_stats_00") * [1, 1, 1, 1e-320])
    bundle = open_bundle(b)              # each value finite and above 0: the arrays pass
    with pytest.raises(BundleError, match="non-finite score on a probe window: score rule "
                                          "'oevae'.*'score_stats'"):
        BundleScorer(bundle, 0, "onnx-fp32")


def _gmm(mu_scale: float = 1.0) -> GmmEnergyRule:
    return GmmEnergyRule({"gmm_phi": np.array([0.5, 0.5]), "gmm_mu": np.ones((2, 4)) * mu_scale,
                          "gmm_cov": np.stack([np.eye(4)] * 2), "jitter": np.array([1e-6])})


@pytest.mark.parametrize("rule, outputs, array", [
    (_gmm(1e300), {"latent": 4}, "gmm_mu"),
    (AeganXL2({"db_range": np.array([-1e308, 1e308])}), {"reconstruction": 64}, "db_range"),
    (AeganDMaha({"location": np.full(4, 1e200), "precision": np.eye(4)}), {"embedding": 4},
     "location"),
    (LatentLdnRule({"code_mean": np.zeros(4), "code_std": np.full(4, 1e-320),
                    "bank": np.eye(4), "bank_density": np.ones(4)}), {"latent": 4}, "code_std"),
])
def test_arrays_that_overflow_together_are_refused_naming_the_array(rule, outputs, array):
    with pytest.raises(BundleError, match=f"non-finite score on a probe window: score rule "
                                          f"'{rule.name}', array '{array}'"):
        check_outputs(Widths(**outputs), ARTIFACT, rule)


def test_ordinary_arrays_pass_the_probe_score():
    check_outputs(Widths(latent=4), ARTIFACT, _gmm())
    check_outputs(Widths(reconstruction=64), ARTIFACT, AeganXL2({"db_range": np.array([-80., 0.])}))


# -- #2: aegan-d-maha's precision ---------------------------------------------------------------
def _precision(seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((40, 6))
    return np.linalg.inv(np.cov(a.T))


@pytest.mark.parametrize("spoil, says", [
    (lambda p: -p, "not positive semi-definite"),
    (lambda p: p + np.triu(np.ones_like(p), 1) * 1e3, "not symmetric"),
    (lambda p: np.zeros_like(p), "all zeros"),
])
def test_a_precision_that_is_not_one_is_refused(spoil, says):
    AeganDMaha({"location": np.zeros(6), "precision": _precision()})
    with pytest.raises(RuleError, match=f"array 'precision' (is )?{says}"):
        AeganDMaha({"location": np.zeros(6), "precision": spoil(_precision())})


# -- #4: aegan-d-knn's unit bank -----------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.0, 1e200, 2.0])
def test_a_knn_bank_without_unit_rows_is_refused(scale):
    rows = np.random.default_rng(0).standard_normal((10, 8))
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    AeganDKnn({"unit_bank": unit, "k": np.array([3])})
    with pytest.raises(RuleError, match="array 'unit_bank' holds rows that are not of unit"):
        AeganDKnn({"unit_bank": unit * scale, "k": np.array([3])})


# -- #6: aegan-d-lof's densities recomputed from its bank ----------------------------------------
@pytest.fixture(scope="module")
def aegan(generative_bundle):
    b = generative_bundle("aegan-ad")
    if json.loads((b / "manifest.json").read_text())["scoring"]["rule"] != "aegan-d-lof":
        pytest.skip("the shared aegan-ad bundle does not ship aegan-d-lof")
    return b


@pytest.mark.parametrize("array, spoil, says", [
    ("bank_00", lambda a: np.zeros_like(a), "bank_kdist"),
    ("bank_00", lambda a: np.repeat(a[:1], len(a), 0), "bank_kdist"),
    ("bank_00", lambda a: a * 1.5, "bank_kdist"),
    ("bank_kdist_00", lambda a: a > a.mean(), "bank_kdist"),
    ("bank_lrd_00", lambda a: a * 2.0, "bank_lrd"),
])
def test_lof_densities_that_do_not_belong_to_the_bank_are_refused(aegan, tmp_path, array, spoil,
                                                                  says):
    open_bundle(aegan)                                         # the export's own: they match
    b = copied(aegan, tmp_path / "b")
    replace_array(b, array, spoil(array_of(b, array)))
    with pytest.raises(BundleError, match=f"array '{says}' does not match array 'bank'"):
        open_bundle(b)


# -- #7: a row cap on every bank ----------------------------------------------------------------
def _unit(n: int, e: int = 2) -> np.ndarray:
    a = np.zeros((n, e))
    a[:, 0] = 1.0
    return a


@pytest.mark.parametrize("make, array, limit", [
    (lambda n: AeganDKnn({"unit_bank": _unit(n), "k": np.array([1])}), "unit_bank",
     MAX_BANK_ROWS),
    (lambda n: AeganDLof({"bank": _unit(n), "bank_kdist": np.zeros(n),
                          "bank_lrd": np.ones(n), "k": np.array([1])}), "bank", MAX_LOF_ROWS),
    (lambda n: LatentLdnRule({"code_mean": np.zeros(2), "code_std": np.ones(2),
                              "bank": _unit(n), "bank_density": np.ones(n)}), "bank",
     MAX_BANK_ROWS),
    (lambda n: OevaeBetaRule({"bank": _unit(n), "knn_k": np.array([1]),
                              "score_stats": np.array([0.0, 1.0, 0.0, 1.0])}), "bank",
     MAX_BANK_ROWS),
])
def test_a_bank_above_the_row_cap_is_refused_naming_the_array(make, array, limit):
    with pytest.raises(RuleError, match=f"array '{array}' has {limit + 1} rows; .* at most {limit}"):
        make(limit + 1)


# -- #11: the k refusal without numpy reprs ------------------------------------------------------
def test_the_k_refusal_prints_plain_numbers():
    with pytest.raises(RuleError) as e:
        AeganDKnn({"unit_bank": _unit(5), "k": np.array([-10])})
    assert "got -10 (int64)" in str(e.value) and "np." not in str(e.value)


# -- rule arrays per artifact (docs/export.md "Rule arrays per artifact") ---------------------
def _per_artifact(b: Path) -> tuple[dict, str, str]:
    """(the manifest, an int8 kind with arrays of its own, the array its section 00 banks)."""
    m = json.loads((b / "manifest.json").read_text())
    kind = sorted(m["scoring"]["per_artifact"])[0]
    return m, kind, m["scoring"]["per_artifact"][kind]["00"]["bank"]


def test_an_int8_artifacts_own_bank_is_checked_like_any_array(oevae, tmp_path):
    """Its file's digest, and its shape when the bundle opens (not at the first interval
    of a device configured for that artifact): a bank of the wrong width is refused even
    though the float artifacts' bank is right."""
    b = copied(oevae, tmp_path / "b")
    m, kind, name = _per_artifact(b)
    path = b / m["arrays"][name]["path"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"arrays.{name}.*sha256"):
        open_bundle(b)
    b2 = copied(oevae, tmp_path / "b2")
    replace_array(b2, name, array_of(b2, name)[:, :-8])
    with pytest.raises(BundleError, match=f"scoring.per_artifact.{kind}.00.*bank"):
        open_bundle(b2)


@pytest.mark.parametrize("spoil, said", [
    (lambda m, kind, name: m["scoring"]["per_artifact"][kind]["00"].update(bank="nope"),
     "names array 'nope', which is not in 'arrays'"),
    (lambda m, kind, name: m["scoring"]["per_artifact"].update(
        {"tflite-fp16": m["scoring"]["per_artifact"][kind]}), "no artifact 'tflite-fp16'"),
    (lambda m, kind, name: m["scoring"]["per_artifact"][kind].update(
        {"07": m["scoring"]["per_artifact"][kind]["00"]}), "07: not one of model.sections"),
    (lambda m, kind, name: m["scoring"]["per_artifact"][kind]["00"].update(extra=name),
     "section 00 has no array 'extra' to replace"),
])
def test_a_per_artifact_block_that_names_what_is_not_there_is_refused(oevae, tmp_path, spoil,
                                                                      said):
    b = copied(oevae, tmp_path / "b")
    m, kind, name = _per_artifact(b)
    spoil(m, kind, name)
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError) as e:
        open_bundle(b)
    assert said in str(e.value) and "\n" not in str(e.value)
