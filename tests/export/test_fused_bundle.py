"""Fusion of several methods: trained (training/fusion.py), exported as one bundle of member
bundles (export/bundle.py) and scored on the device (agent/model/fused.py), each checked against
the definition written out: every member's score standardised with its section's mean and
std of held-out normal training scores, then the weighted mean."""

import csv
import json
import shutil

import numpy as np
import pytest

from harken.agent.model.bundle import BundleError, open_bundle
from harken.agent.cli import main as agent_main
from harken.agent.decision import Decision
from harken.common.errors import UsageError
from harken.agent.features import StreamingLogMel, logmel
from harken.agent.pipeline import Pipeline
from harken.agent.model.factory import make_scorer
from harken.agent.sources.dc import remove_dc
from harken.agent.sources.wavio import read_wav
from harken.export.bundle import ExportOptions, write_bundle
from harken.export.verify import verify
from harken.training.data.corpus import scan
from harken.training.data.windows import clip_features
from harken.training.fusion import Fusion
from harken.training.methods import make_method, method_class

pytestmark = pytest.mark.xdist_group("test_fused_bundle")

MEMBERS = ["spectral-knn", "ae"]
WEIGHTS = [1.0, 0.5]


@pytest.fixture(scope="module")
def run(small_fan, tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion") / "fan"
    make_method("fusion", ["members=spectral-knn,ae", "weights=1,0.5", "ae.epochs=2"]).train(
        scan(small_fan, ["fan"], "train"), root, progress=False)
    return root


@pytest.fixture(scope="module")
def bundle_dir(run, small_fan, tmp_path_factory):
    return write_bundle(run, tmp_path_factory.mktemp("fused") / "bundle", small_fan,
                        ExportOptions(precision="both"))


@pytest.fixture(scope="module")
def test_clips(small_fan):
    clips = scan(small_fan, ["fan"], "test")
    return clips[::3]


def held_out(run_dir):
    with open(run_dir / "held_out_scores.csv", newline="") as f:
        return [(r["file"], int(r["section"]), float(r["score"])) for r in csv.DictReader(f)]


def by_definition(run, clips):
    """Each member loaded on its own, its scores standardised per section by hand."""
    total = np.zeros(len(clips))
    for name, w in zip(MEMBERS, WEIGHTS):
        member_dir = run / name
        scores = method_class(name).load(member_dir).score(clips, progress=False)
        rows = held_out(member_dir)
        for i, c in enumerate(clips):
            ref = np.array([s for _, sec, s in rows if sec == c.section])
            total[i] += w * (scores[i] - ref.mean()) / ref.std()
    return total / sum(WEIGHTS)


def test_fused_score_is_each_member_standardised_on_its_held_out_clips(run, test_clips):
    got = Fusion.load(run).score(test_clips, progress=False)
    np.testing.assert_allclose(got, by_definition(run, test_clips), rtol=1e-9, atol=1e-9)


def test_fused_threshold_comes_from_the_clips_every_member_held_out(run):
    members = [{f for f, _, _ in held_out(run / m)} for m in MEMBERS]
    fused = held_out(run)
    assert {f for f, _, _ in fused} == members[0] & members[1]
    # spectral-knn holds out every clip (leave-one-out), the AE its validation clips only
    assert len(members[0]) > len(members[1]) == len(fused)
    info = json.loads((run / "run.json").read_text())
    scores = np.array([s for _, _, s in fused])
    assert info["normal_scores"]["n"] == len(scores)
    assert info["normal_scores"]["mean"] == pytest.approx(scores.mean())


def test_fusion_settings_are_checked_before_any_training():
    with pytest.raises(UsageError, match="not a method to fuse"):
        make_method("fusion", ["members=spectral-knn,nope"])
    with pytest.raises(UsageError, match="at least two different methods"):
        make_method("fusion", ["members=ae,ae"])
    with pytest.raises(UsageError, match="2 given for 3 members"):
        make_method("fusion", ["members=ae,spectral-knn,mobilenetv2", "weights=1,2"])
    with pytest.raises(UsageError, match="'oevae' is not a member"):
        make_method("fusion", ["oevae.epochs=2"])
    with pytest.raises(UsageError, match="no such setting"):
        make_method("fusion", ["members=ae,spectral-knn", "ae.nope=2"])
    with pytest.raises(UsageError, match="members: feature specs .* differ in 'n_mels'"):
        make_method("fusion", ["members=spectral-knn,gmgan"])


def test_fused_bundle_scores_like_the_training_code(run, bundle_dir, small_fan, test_clips):
    bundle = open_bundle(bundle_dir)
    assert bundle.is_fused and sorted(bundle.members) == sorted(MEMBERS)
    assert bundle.spec.spectrum         # the shared front end: spectral-knn reads the spectrum
    feats = clip_features(test_clips, bundle.spec, progress=False)
    scorers = {s: make_scorer(bundle, s, "onnx-fp32") for s in bundle.sections}
    got = [scorers[c.section].score_logmel(f) for c, f in zip(test_clips, feats)]
    np.testing.assert_allclose(got, Fusion.load(run).score(test_clips, progress=False),
                               atol=1e-4)


def test_verify_compares_fused_int8_with_fused_float(bundle_dir, small_fan):
    checks = {c.artifact: c for c in verify(open_bundle(bundle_dir), small_fan, max_clips=24,
                                             progress=False)}
    # spectral-knn has no weights (float only): int8 means the AE's int8 beside it
    assert {"onnx-fp32+onnx-int8", "tflite-fp32+tflite-int8", "onnx-fp32",
            "tflite-fp32"} <= set(checks)
    for kind in ("onnx-fp32", "tflite-fp32"):
        assert checks[kind].max_abs_error < 1e-4, kind
    for kind in ("onnx-fp32+onnx-int8", "tflite-fp32+tflite-int8"):
        assert checks[kind].spearman > 0.9, kind
        assert abs(checks[kind].official - checks["torch-fp32"].official) < 0.03, kind


def test_agent_pipeline_streams_a_fused_bundle_as_it_scores_a_clip(bundle_dir, small_fan):
    bundle = open_bundle(bundle_dir)
    clip = scan(small_fan, ["fan"], "test")[0]
    x, _ = read_wav(clip.path, bundle.spec.sample_rate)
    scorer = make_scorer(bundle, clip.section, "tflite-int8")
    pipe = Pipeline(scorer, Decision(1.0), interval_s=5.0)
    rng = np.random.default_rng(0)
    results, start = [], 0
    while start < len(x):
        n = int(rng.integers(100, 9000))
        results += pipe.push(x[start:start + n])
        start += n
    results += pipe.finish()
    assert len(results) == 2
    frames = StreamingLogMel(bundle.spec)      # after the DC removal, as on the device
    y = remove_dc(x, bundle.spec.sample_rate)
    whole = np.concatenate([frames.push(y), frames.finish()])
    first = whole[:pipe.interval_frames]
    assert results[0].score == pytest.approx(scorer.score_frames(first)[0], abs=1e-9)
    assert "+" not in results[0].backend          # both members on the one runtime
    assert results[0].windows == sum(
        len(range(0, pipe.interval_frames - m.bundle.spec.window_frames + 1,
                  m.bundle.spec.window_hop)) for m in scorer.members)


def test_harken_score_reads_a_fused_bundle(bundle_dir, small_fan, capsys):
    clip = scan(small_fan, ["fan"], "test")[0]
    assert agent_main(["score", str(bundle_dir), str(clip.path), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    bundle = open_bundle(bundle_dir)
    x, _ = read_wav(clip.path, bundle.spec.sample_rate)
    expected = make_scorer(bundle, bundle.sections[0]).score_logmel(
        logmel(remove_dc(x, bundle.spec.sample_rate), bundle.spec))     # as the device hears it
    assert row["score"] == pytest.approx(expected, abs=1e-6)
    assert row["threshold"] == bundle.threshold


def edit_manifest(root, change):
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["fusion"]["standardise"]["00"].pop("ae"), "fusion.standardise.00 has no 'ae'"),
    (lambda d: d["fusion"]["standardise"]["01"]["ae"].__setitem__(1, 0.0),
     "must be a finite mean and a positive std"),
    (lambda d: d["fusion"]["members"][0].__setitem__("path", "../elsewhere"),
     "leaves the bundle"),
    (lambda d: d["fusion"]["members"].pop(), "fusion: field 'members'"),
    (lambda d: d["model"].__setitem__("sections", [0, 1, 7]), "has no section(s) [7]"),
    (lambda d: d["feature_spec"].__setitem__("spectrum", False), "shared front end"),
    (lambda d: d["scoring"].__setitem__("per_artifact", {"onnx-int8": {"00": {"bank": "x"}}}),
     "scoring.per_artifact: a fused bundle has no arrays of its own"),
])
def test_a_broken_fused_manifest_is_refused_naming_the_field(bundle_dir, tmp_path, edit,
                                                             message):
    b = tmp_path / "b"
    shutil.copytree(bundle_dir, b)
    edit_manifest(b, edit)
    with pytest.raises(BundleError) as err:
        open_bundle(b)
    assert message in str(err.value)


def test_a_changed_member_is_refused_by_its_pinned_hash(bundle_dir, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(bundle_dir, b)
    edit_manifest(b / "members" / "ae", lambda d: d["threshold"].__setitem__("value", 99.0))
    with pytest.raises(BundleError, match=r"members/ae/manifest.json: sha256 does not match "
                                          r"'.*fusion.members\[1\].manifest_sha256'"):
        open_bundle(b)


def test_members_trained_before_are_copied_not_retrained(run, small_fan, tiny_corpus, tmp_path):
    from harken.training.runs import RunError
    trained = tmp_path / "trained"
    for m in MEMBERS:
        shutil.copytree(run / m, trained / m / "fan")
    again = tmp_path / "again" / "fan"
    make_method("fusion", ["members=spectral-knn,ae", "weights=1,0.5", f"trained={trained}"]
                ).train(scan(small_fan, ["fan"], "train"), again, progress=False)
    first, second = (json.loads((d / "run.json").read_text()) for d in (run, again))
    assert second["standardise"] == first["standardise"]
    assert second["normal_scores"] == first["normal_scores"]
    # a member trained on other clips is refused before anything is written
    with pytest.raises(RunError, match="trained on other clips"):
        make_method("fusion", ["members=spectral-knn,ae", f"trained={trained}"]).train(
            scan(tiny_corpus, ["fan"], "train"), tmp_path / "other" / "fan", progress=False)
    assert not (tmp_path / "other" / "fan" / "run.json").exists()


def test_without_a_named_artifact_every_member_runs_on_one_runtime(bundle_dir):
    bundle = open_bundle(bundle_dir)
    scorer = make_scorer(bundle, 0)
    # the agent's first choice (TFLite int8) for the AE; spectral-knn, float only, takes
    # TFLite's float model rather than another runtime
    assert scorer.artifact_kind == "tflite-fp32+tflite-int8"
    assert [m.artifact.kind for m in scorer.members] == ["tflite-fp32", "tflite-int8"]


def test_a_fusion_trained_skipping_a_damaged_clip_has_members_that_check_out(small_fan,
                                                                            tmp_path):
    """Was: only the fusion's run.json recorded what the scan skipped; each member, read on
    its own (the fused export calibrates and refits member by member), scanned every clip
    and stopped on the damaged one its training had left out."""
    from harken.export.bundle import _clip_seconds
    from harken.training.cli import main as train_main
    from harken.training.runs import check_corpus, read_run
    corpus = tmp_path / "corpus"
    shutil.copytree(small_fan, corpus, symlinks=True)
    (corpus / "fan" / "train" / "section_00_source_train_normal_9999.wav").write_bytes(b"RIFF?")
    assert train_main(["train", "--method", "fusion", "--data", str(corpus), "--machine", "fan",
                       "--out", str(tmp_path / "runs"), "--set", "members=spectral-knn,ae",
                       "--set", "ae.epochs=1", "--skip-bad-clips", "--quiet"]) == 0
    for member in MEMBERS:
        run_dir = tmp_path / "runs" / "fan" / member
        info = read_run(run_dir)
        assert check_corpus(run_dir, info, corpus, test_clips=False)["skip_bad_clips"]
        assert _clip_seconds(info, corpus) == 10.0
