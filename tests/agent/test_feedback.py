"""False-alarm feedback end to end on real files: a general bundle enrolled on a few normal
clips, a real ``harken run`` (the runner, on a WAV with a whine in its middle) writing the
feedback store, then mark_normal / undo / recalibrate driven directly: the fed-back
intervals score lower, the threshold is kept as docs/agent.md says, undo gives back
what build() gave before bit for bit, and every refusal is one line."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from harken.agent.build import build, resolve_threshold
from harken.agent.config import load_config
from harken.agent.decision.records import IntervalResult
from harken.agent.model.overlay import overlay_file, read_overlay
from harken.agent.operator import audit
from harken.agent.operator.feedback import (FeedbackError, live_state, mark_normal,
                                            recalibrate, undo)
from harken.agent.runner import run_config
from harken.agent.sinks.recent import ANOMALY, START, read_store, store_folder
from harken.agent.sources.wavio import read_wav, write_wav
from harken.testkit.files import whine, write_agent_config

pytestmark = pytest.mark.xdist_group("test_feedback")


def _config(folder, bundle, wav, **extra):
    return write_agent_config(
        folder / "agent.toml",
        agent={"node": "site", "machine": "fan", "state_dir": folder / "state"},
        model={"bundle": bundle}, audio={"source": "file", "file": wav},
        output={"stdout": False}, **{"decision": {"interval_s": 2}, **extra})


@pytest.fixture(scope="module")
def site(general_bundle, small_fan, tmp_path_factory):
    """An enrolled general bundle and a store written by a real run over 30 s of audio:
    normal, the same machine with a whine (an anomaly event), normal again. Returns the
    folder, the config path and the pristine state folder's files (copied back per test)."""
    from harken.agent.site.enroll import enroll
    from harken.training.data.corpus import scan
    folder = tmp_path_factory.mktemp("feedback")
    clips = [c for c in scan(small_fan, ["fan"], "train") if c.section == 0]
    train, heard = clips[:8], clips[8:11]         # the site's audio: clips not enrolled
    parts = [read_wav(c.path, 16000)[0] for c in heard]
    parts[1] = whine(parts[1], 16000)
    wav = folder / "site.wav"
    write_wav(wav, np.concatenate(parts), 16000)
    cfg = _config(folder, general_bundle, wav)
    enroll(load_config(cfg), files=[str(c.path) for c in train], progress=False)
    assert run_config(load_config(cfg)) == 0
    saved = {p.relative_to(folder / "state"): p.read_bytes()
             for p in (folder / "state").rglob("*") if p.is_file()}
    return folder, cfg, saved


@pytest.fixture
def machine(site):
    """The site's state folder as the run left it (each test changes it)."""
    folder, cfg, saved = site
    import shutil
    shutil.rmtree(folder / "state")
    for rel, data in saved.items():
        (folder / "state" / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / "state" / rel).write_bytes(data)
    return folder, load_config(cfg)


def _event(config):
    stored = read_store(store_folder(config.path(config.agent.state_dir), "fan"))
    starts = stored.seq[stored.has(START)]
    assert starts.size, f"the whine raised no event: scores {stored.score.round(2)}"
    return stored, int(starts[0])


def _state(config):
    """What build() gives: the rule's arrays and the threshold."""
    _, pipeline = build(config)
    return dict(pipeline.scorer.rule.arrays), pipeline.decision.threshold


def test_the_run_stores_every_interval_with_its_statistics(machine):
    folder, config = machine
    stored = read_store(store_folder(folder / "state", "fan"))
    assert len(stored) == 15 and stored.seq.tolist() == list(range(1, 16))
    assert all(s is not None and set(s) >= {"mel", "spectrum"} for s in stored.statistics)
    # the stored statistics rescored through the rule give the scores the run published
    rule, threshold = live_state(config, build(config)[0])
    rows = {k: np.stack([s[k] for s in stored.statistics]) for k in stored.statistics[0]}
    np.testing.assert_allclose(rule.score_statistics(rows), stored.score, rtol=1e-4, atol=1e-4)
    assert np.all(stored.threshold == threshold)


def test_feedback_on_an_event_lowers_its_scores_keeps_the_threshold_and_undo_restores(machine):
    folder, config = machine
    stored, seq = _event(config)
    arrays0, threshold0 = _state(config)
    rule0, _ = live_state(config, build(config)[0])
    out = mark_normal(config, event=seq, operator="alice", via="cli")
    n = config.decision.n
    assert out["intervals"][0] == max(1, seq - (n - 1)) and seq in out["intervals"]
    assert out["threshold_before"] == threshold0
    assert out["rows_after"] == out["rows_before"] + len(out["intervals"])
    # the threshold is kept, the machine's own rows keep their densities (finding 1 of
    # the second hostile round): no score rises
    rule1, threshold1 = live_state(config, build(config)[0])
    assert threshold1 == out["threshold_after"] == threshold0
    own = rule0.bank_rows
    for b in ("mel", "spectrum"):
        assert np.array_equal(rule1.arrays[f"{b}_density"][:own], rule0.arrays[f"{b}_density"])
    every = {k: np.stack([s[k] for s in stored.statistics]) for k in stored.statistics[0]}
    assert np.all(rule1.score_statistics(every) <= rule0.score_statistics(every) + 1e-9)
    arrays1, built1 = _state(config)
    assert built1 == threshold1 and len(arrays1["mel_bank"]) == out["rows_after"]
    # the fed-back intervals now score lower (they are in the bank)
    idx = np.isin(stored.seq, out["intervals"])
    rows = {k: np.stack([stored.statistics[i][k] for i in np.nonzero(idx)[0]])
            for k in stored.statistics[0]}
    assert np.all(rule1.score_statistics(rows) < rule0.score_statistics(rows))
    # the audit line
    line = audit.read(folder / "state", "fan")[-1]
    assert (line["action"], line["outcome"], line["operator"], line["via"]) == \
        ("feedback", "ok", "alice", "cli")
    assert line["intervals"] == out["intervals"] and line["threshold_after"] == threshold1
    # given again: nothing new, refused, nothing changed
    before = overlay_file(folder / "state", "fan").read_bytes()
    with pytest.raises(FeedbackError, match="in the bank already"):
        mark_normal(config, event=seq, operator="alice", via="cli")
    assert overlay_file(folder / "state", "fan").read_bytes() == before
    # undo: what build() gave before the feedback, bit for bit, and no overlay left
    u = undo(config, operator="bob", via="socket", command_id="c-1")
    assert "note" not in u and "warning" not in u       # the threshold it had, restored
    assert (u["threshold_before"], u["threshold_after"]) == (threshold1, threshold0)
    arrays2, threshold2 = _state(config)
    assert threshold2 == threshold0
    assert arrays2.keys() == arrays0.keys()
    assert all(np.array_equal(arrays2[k], arrays0[k]) for k in arrays0)
    assert not overlay_file(folder / "state", "fan").exists()
    assert audit.read(folder / "state", "fan")[-1]["command_id"] == "c-1"
    with pytest.raises(FeedbackError, match="no feedback to undo"):
        undo(config, operator="bob", via="cli")


def test_two_feedbacks_then_undo_gives_the_first_back(machine):
    folder, config = machine
    stored = read_store(store_folder(folder / "state", "fan"))
    mark_normal(config, start=stored.ts[0], end=stored.ts[2], operator="a", via="cli")
    arrays1, threshold1 = _state(config)
    # what check-config shows reads the overlay too
    bundle, pipeline = build(config)
    value, origin = resolve_threshold(config, bundle, pipeline.scorer.enrollment)
    assert value == threshold1 and origin.startswith("feedback ")
    out = mark_normal(config, start=stored.ts[10], end=stored.ts[12], operator="a", via="mqtt")
    assert out["change"] == 2 and out["intervals"] == stored.seq[10:13].tolist()
    undo(config, operator="a", via="cli")
    arrays2, threshold2 = _state(config)
    assert threshold2 == threshold1
    assert all(np.array_equal(arrays2[k], arrays1[k]) for k in arrays1)


def test_a_config_threshold_stays_and_is_said(machine, site):
    folder, config = machine
    stored = read_store(store_folder(folder / "state", "fan"))
    fixed = config.model_copy(update={"decision": config.decision.model_copy(
        update={"threshold": 3.5})})
    out = mark_normal(fixed, start=stored.ts[0], end=stored.ts[3], operator="a", via="cli")
    assert out["threshold_before"] == out["threshold_after"] == 3.5
    assert "decision.threshold = 3.5 is set" in out["note"]


@pytest.mark.parametrize("kwargs, message", [
    ({"event": 999}, "no interval 999 in the feedback store"),
    ({"event": 1}, "interval 1 did not start an anomaly event"),
    ({"start": 1.0, "end": 2.0}, "no interval stored in the range"),
    ({"start": 5.0, "end": 2.0}, "from must not be after to"),
    ({}, "give an event"),
    ({"event": 3, "start": 1.0, "end": 2.0}, "give an event"),
    ({"event": "3"}, "expected the seq"),
    ({"start": "yesterday", "end": 2.0}, "expected UTC epoch seconds"),
    ({"event": 3, "operator": ""}, "operator '': expected a name"),
    ({"event": 3, "command_id": "x" * 129}, "command id"),
])
def test_refusals_change_nothing(machine, kwargs, message):
    folder, config = machine
    with pytest.raises(FeedbackError, match=message):
        mark_normal(config, **{"operator": "a", "via": "cli", **kwargs})
    assert not overlay_file(folder / "state", "fan").exists()
    assert not audit.read(folder / "state", "fan")


def test_store_off_is_refused(machine):
    folder, config = machine
    off = config.model_copy(update={"feedback": config.feedback.model_copy(
        update={"keep_hours": 0.0})})
    with pytest.raises(FeedbackError, match=r"the feedback store is off \(\[feedback\] keep_hours = 0\)"):
        mark_normal(off, event=3, operator="a", via="cli")
    with pytest.raises(FeedbackError, match="store is off"):
        recalibrate(off, operator="a", via="cli")


def test_a_bundle_without_a_bank_is_refused(ae_bundle, tmp_path, wav):
    cfg = load_config(_config(tmp_path, ae_bundle, wav, decision={"interval_s": 2,
                                                                 "threshold": 1.0}))
    with pytest.raises(FeedbackError, match=r"feedback is not possible for this bundle "
                       r"\(.*: rule mse scores without a reference bank\)"):
        mark_normal(cfg, event=1, operator="a", via="cli")
    assert live_state(cfg, build(cfg)[0])[0] is None


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:len(b) // 2], "not a readable feedback overlay"),
    ("tamper", "does not match its sha256"),
    ("other", "machine 'fan', section 0, but this is model"),
])
def test_a_damaged_or_foreign_overlay_is_set_aside_at_start(machine, damage, message, caplog):
    """Finding 4 (second round): an overlay of another model (a bundle upgrade), tampered
    or truncated stopped the node (run exit 2). Now a start sets it aside (renamed with a
    UTC stamp, one warning naming it) and the machine is heard with its own bank;
    check-config only says so and renames nothing."""
    folder, config = machine
    stored = read_store(store_folder(folder / "state", "fan"))
    mark_normal(config, start=stored.ts[0], end=stored.ts[3], operator="a", via="cli")
    path = overlay_file(folder / "state", "fan")
    if damage == "tamper":
        with np.load(path) as z:
            arrays = dict(z)
        arrays["rows_mel"] = arrays["rows_mel"] + 1
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    elif damage == "other":
        with np.load(path) as z:
            arrays = dict(z)
        manifest = json.loads(arrays["manifest"].tobytes())
        manifest["model"] = "another-model"
        from harken.agent.model.overlay import digest
        arrays.pop("manifest")
        manifest["sha256"] = digest(arrays, manifest)
        with open(path, "wb") as f:
            np.savez(f, manifest=np.frombuffer(json.dumps(manifest).encode(), np.uint8),
                     **arrays)
    else:
        path.write_bytes(damage(path.read_bytes()))
    damaged = path.read_bytes()
    from harken.agent.build import preflight
    with caplog.at_level("WARNING"):
        _, checked = preflight(config, aside=False)          # check-config: said only
    assert "'harken run' will set it aside" in caplog.text and message in caplog.text
    assert path.read_bytes() == damaged
    caplog.clear()
    with caplog.at_level("WARNING"):
        _, pipeline = build(config)
    (aside,) = path.parent.glob(f"{path.name}.set-aside-*")
    assert not path.exists() and aside.read_bytes() == damaged
    assert [r for r in caplog.records if aside.name in r.getMessage()
            and "no longer applies" in r.getMessage() and message in r.getMessage()]
    arrays0, threshold0 = _state(config)                     # the bank without feedback
    assert pipeline.decision.threshold == checked.decision.threshold == threshold0
    assert len(arrays0["mel_bank"]) == len(pipeline.scorer.rule.arrays["mel_bank"]) == \
        live_state(config, build(config)[0])[0].bank_rows




def test_recalibrate_fits_an_override_from_the_store(machine):
    folder, config = machine
    stored = read_store(store_folder(folder / "state", "fan"))
    # the site's normal audio alarms at every interval (a bank of 16 s of audio): the
    # intervals still anomalous are left out, those marked normal count
    assert stored.has(ANOMALY)[1:].all()
    with pytest.raises(FeedbackError, match=r"only 1 usable interval.* need at least 60"):
        recalibrate(config, hours=1, operator="a", via="cli")
    _normal_parts(config, stored, quiet=False)
    # marked normal: in the bank, their held-out scores are not live scores (finding 2b)
    with pytest.raises(FeedbackError, match=r"only 0 usable interval.*not marked normal"):
        recalibrate(config, hours=1, operator="a", via="cli")
    _quiet_run(config)
    out = recalibrate(config, hours=1, operator="a", via="cli")
    assert config.override_file.is_file()
    assert out["intervals"] == 70
    assert build(config)[1].decision.threshold == out["threshold_after"]
    line = audit.read(folder / "state", "fan")[-1]
    assert line["action"] == "recalibrate-threshold" and line["outcome"] == "ok"
    with pytest.raises(FeedbackError, match="hours = 0: expected"):
        recalibrate(config, hours=0, operator="a", via="cli")


def _normal_parts(config, stored, quiet=True):
    """Feedback on the normal audio before and after the whine (10 intervals); ``quiet``:
    then a second run of 70 intervals of that audio, not anomalous (what recalibrate
    fits on: it needs 60)."""
    for i, j in ((0, 4), (10, 14)):
        mark_normal(config, start=stored.ts[i], end=stored.ts[j], operator="a", via="cli")
    if quiet:
        _quiet_run(config)


def _quiet_run(config, n=70):
    """A second run of ``n`` intervals of the site's normal audio, none anomalous."""
    return _second_run(config, [(0, 1, 2, 3, 4, 10, 11, 12, 13, 14)[i % 10] for i in range(n)],
                       100, scale=1.0 + 0.02 * np.random.default_rng(7).random(n))


def test_a_base_changed_since_the_feedback_is_in_force_without_a_warning(machine, caplog):
    """Feedback keeps the threshold, so a threshold set since (recalibrated) is simply the
    one in force: no warning at every start about a feedback threshold set aside."""
    folder, config = machine
    _normal_parts(config, read_store(store_folder(folder / "state", "fan")))
    out = recalibrate(config, hours=1, operator="a", via="cli")
    with caplog.at_level("WARNING"):
        assert build(config)[1].decision.threshold == out["threshold_after"]
    assert "is set aside" not in caplog.text


KILLED = """
import sys
from harken.agent.config import load_config
from harken.agent.decision.records import IntervalResult
from harken.agent.operator.feedback import mark_normal
c = load_config(sys.argv[1])
mark_normal(c, start=float(sys.argv[2]), end=float(sys.argv[3]), operator="k", via="cli")
"""


def test_a_kill_during_feedback_leaves_the_old_overlay_or_the_new(machine):
    folder, config = machine
    stored = read_store(store_folder(folder / "state", "fan"))
    mark_normal(config, start=stored.ts[0], end=stored.ts[1], operator="a", via="cli")
    path = overlay_file(folder / "state", "fan")
    old = path.read_bytes()
    args = [sys.executable, "-c", KILLED, str(config.source_file), str(stored.ts[5]),
            str(stored.ts[7])]
    proc = subprocess.Popen(args, env={**os.environ, "HARKEN_FEEDBACK_PAUSE": "1"})
    marker = path.with_name(f".{path.name}.paused")
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    marker.unlink()
    assert path.read_bytes() == old                  # the old one, whole
    assert len(read_overlay(path, build(config)[0].model_id, "fan", 0).changes) == 1
    subprocess.run(args, check=True, timeout=120)    # finished: the new one, whole
    new = read_overlay(path, build(config)[0].model_id, "fan", 0)
    assert [c.id for c in new.changes] == [1, 2] and len(new) == 2 + 3
    assert not list(path.parent.glob(f".{path.name}.*.tmp"))


# -- the rules' bank capability on its own (no model) ------------------------------------

def test_spectral_knn_held_out_scores_are_the_enrolled_banks_and_references_join_it(rng):
    from harken.agent.model.rules import make_rule
    from harken.agent.model.rules.density import local_densities
    from harken.agent.model.rules.spectral_knn import branch_statistics, fit_bank
    vectors = {"mel": rng.normal(size=(30, 8)), "spectrum": rng.normal(size=(30, 5))}
    arrays, loo = fit_bank(vectors, branch_statistics(vectors), 4, [1.0, 1.0, 0.5, 0.5])
    rule = make_rule("spectral-knn", {**arrays, "fusion_weights": np.array([1.0, 1.0, 0.5, 0.5]),
                                      "n_mels": np.array(4)})
    np.testing.assert_allclose(rule.held_out_scores(), loo, rtol=1e-12, atol=1e-12)
    extra = {"mel": rng.normal(size=(3, 8)), "spectrum": rng.normal(size=(3, 5))}
    grown = rule.with_references(extra, 4)
    assert grown.bank_rows == 33 and rule.bank_rows == 30        # the old rule unchanged
    for b in ("mel", "spectrum"):
        z = (extra[b] - arrays[f"{b}_mean"]) / arrays[f"{b}_std"]
        np.testing.assert_array_equal(grown.arrays[f"{b}_bank"][30:], z)
        # the bank's own rows keep theirs; a joined row's is its own over the union, held
        # between the smallest and largest of the own rows' (second hostile round, 1)
        own = arrays[f"{b}_density"]
        union = local_densities(grown.arrays[f"{b}_bank"], 4, "euclidean")
        np.testing.assert_array_equal(grown.arrays[f"{b}_density"],
                                      np.r_[own, np.clip(union[30:], own.min(), own.max())])
        np.testing.assert_array_equal(grown.arrays[f"{b}_fusion"], arrays[f"{b}_fusion"])
    # a row now in the bank scores lower than it did
    assert np.all(grown.score_statistics(extra) < rule.score_statistics(extra))
    with pytest.raises(ValueError, match="statistics 'mel' of shape"):
        rule.with_references({"mel": np.zeros((2, 7)), "spectrum": np.zeros((2, 5))}, 4)


def test_embedding_density_held_out_scores_are_the_enrolled_banks(rng):
    from harken.agent.model.rules import make_rule
    from harken.agent.site.enroll_embedding import fit_embedding_bank
    emb = rng.normal(size=(25, 6))
    arrays, loo = fit_embedding_bank(emb, 4)
    rule = make_rule("embedding-density", arrays)
    np.testing.assert_allclose(rule.held_out_scores(), loo, rtol=1e-12, atol=1e-12)
    assert rule.statistics(emb[:4])["embedding"].shape == (6,)
    grown = rule.with_references({"embedding": emb[:2] + 0.5}, 4)
    assert grown.bank_rows == 27
    assert np.array_equal(grown.arrays["bank_density"][:25], arrays["bank_density"])
    # a score is a minimum over more rows, each own row's density kept: none rises
    probe = rng.normal(size=(40, 6))
    assert np.all(grown.score_statistics({"embedding": probe})
                  <= rule.score_statistics({"embedding": probe}) + 1e-12)
    np.testing.assert_allclose(rule.score_statistics({"embedding": emb[:3]}),
                               [rule.reduce(e[None]) for e in emb[:3]], atol=1e-12)


def test_the_events_the_store_holds_are_listed_for_the_operator(machine):
    """``harken feedback --events``: the seqs an operator can name, and which were given."""
    folder, config = machine
    from harken.agent.operator.feedback import recent_events
    _, seq = _event(config)
    events = recent_events(config)
    assert [e["event"] for e in events if e["event"] == seq] == [seq]
    assert not any(e["fed_back"] for e in events)
    assert all(e["peak_score"] >= e["threshold"] for e in events)
    mark_normal(config, event=seq, operator="alice", via="cli")
    out = subprocess.run([sys.executable, "-m", "harken.agent.cli", "feedback", "--config",
                          str(config.source_file), "--events"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    listed = [json.loads(line) for line in out.stdout.splitlines()]
    assert next(e for e in listed if e["event"] == seq)["fed_back"] is True
    bad = subprocess.run([sys.executable, "-m", "harken.agent.cli", "feedback", "--config",
                          str(config.source_file), "--events", "normal"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "take no verdict" in bad.stderr
    assert "Traceback" not in bad.stderr


# -- the hostile tester's findings (issue 40) ---------------------------------------------

@pytest.fixture(scope="module")
def anomalies(site, small_fan, general_bundle):
    """The bank statistics of 20 intervals of the corpus's anomalous test clips of the
    site's machine (a real run over them), to see what the detector still flags."""
    from harken.training.data.corpus import scan
    folder, cfg, saved = site
    clips = [c for c in scan(small_fan, ["fan"], "test") if c.section == 0 and c.is_anomaly]
    wav = folder / "anomalies.wav"
    write_wav(wav, np.concatenate([read_wav(c.path, 16000)[0] for c in clips[:4]]), 16000)
    state = folder / "anomalies-state"
    state.mkdir()
    (state / "enrolled-fan.npz").write_bytes(saved[next(p for p in saved
                                                        if p.name == "enrolled-fan.npz")])
    acfg = write_agent_config(
        folder / "anomalies.toml", agent={"node": "site", "machine": "fan", "state_dir": state},
        model={"bundle": general_bundle},
        # only the statistics are used: no need to play the 40 s at a microphone's pace
        audio={"source": "file", "file": wav, "realtime": False},
        output={"stdout": False}, decision={"interval_s": 2})
    assert run_config(load_config(acfg)) == 0
    stored = read_store(store_folder(state, "fan"))
    return {k: np.stack([s[k] for s in stored.statistics]) for k in stored.statistics[0]}


def _keep_first(config, k):
    """The store cut to its first ``k`` intervals: feedback given while the event goes on."""
    from harken.agent.sinks.recent import read_segment, segments
    (path,) = segments(store_folder(config.path(config.agent.state_dir), "fan"))
    seg = read_segment(path)
    raw = path.read_bytes()
    head = len(raw) - len(seg.records) * seg.records.dtype.itemsize
    path.write_bytes(raw[:head + k * seg.records.dtype.itemsize])


@pytest.mark.parametrize("k", [2, 6, 7, 10, 15])
def test_feedback_during_an_event_keeps_the_threshold_and_the_anomalies(machine, anomalies, k):
    """Finding 1: feedback on the first k intervals of the whine event swung the threshold
    7.75 -> 11.76 (k=2), 16.85 (k=6), 24.56 (k=7: every anomaly below it). The threshold
    is now kept, and a row fed back cannot divide scores near it by a huge density: 9 in
    10 flagged anomalies stay flagged (k=2 adds two intervals of normal audio: those like
    them may fall)."""
    folder, config = machine
    _keep_first(config, k)
    _, seq = _event(config)
    rule0, threshold0 = live_state(config, build(config)[0])
    out = mark_normal(config, event=seq, operator="a", via="cli")
    assert out["intervals"] == list(range(1, k + 1))
    rule1, threshold1 = live_state(config, build(config)[0])
    assert threshold1 == threshold0
    flagged0 = rule0.score_statistics(anomalies) > threshold0
    flagged1 = rule1.score_statistics(anomalies) > threshold1
    assert flagged0.sum() >= 10
    assert (flagged0 & flagged1).sum() >= 0.9 * flagged0.sum(), (flagged0.sum(), flagged1.sum())


def _second_run(config, rows, seq0, flags=(), scale=1.0, gap_s=5.0):
    """A second run's intervals appended to the store (a new RecentStore, as a restart
    makes): ``rows`` stored intervals' statistics (times ``scale``: other audio), seqs
    from ``seq0``; ``flags``: per interval "start", "end", "maintenance" or ""."""
    from harken.agent.decision.hysteresis import Event
    from harken.agent.sinks.recent import RecentStore
    state = config.path(config.agent.state_dir)
    stored = read_store(store_folder(state, "fan"))
    bundle = build(config)[0]
    store = RecentStore(store_folder(state, "fan"), 24, 64)
    t = float(stored.ts.max()) + gap_s
    for i, r in enumerate(rows):
        f = flags[i] if i < len(flags) else ""
        event = Event(f, t + i, 30.0, 0.0) if f in ("start", "end") else None
        store.add(IntervalResult(
            t + 0.01 * i, seq0 + i, float(stored.score[r]), float(stored.threshold[r]),
            f == "start", 2.0, bundle.model_id, "test", "ok", -30.0, 1, 0.0, event=event,
            statistics={k: v * (scale[i] if np.ndim(scale) else scale)
                        for k, v in stored.statistics[r].items()},
            maintenance=f == "maintenance"))
    store.close()
    return read_store(store_folder(state, "fan"))


@pytest.mark.parametrize("flags, why", [
    ((), "a restart (the next run's first interval)"),
    (("", "", "end"), "a restart, though the next run's seqs go on and it ends an event"),
])
def test_an_open_event_ends_at_a_restart(machine, flags, why):
    """Finding 2: event 2 was left open (the run ended in it); a second run goes on with
    seqs 16.. and ends an event of its own. --event 2 took 1..30 (both runs); now the
    intervals of its own run only."""
    folder, config = machine
    _, seq = _event(config)
    _second_run(config, range(5, 10), 16, flags, scale=1.3)
    out = mark_normal(config, event=seq, operator="a", via="cli")
    assert max(out["intervals"]) == 15, why
    from harken.agent.operator.feedback import recent_events
    listed = next(e for e in recent_events(config) if e["event"] == seq)
    assert listed["ended_by"] == "restart" and listed["end"] is not None, why


@pytest.mark.parametrize("at, flag", [(10, "maintenance"), (10, "start")])
def test_an_open_event_ends_before_maintenance_or_the_next_start(machine, at, flag):
    """Finding 2: an event left open by maintenance (which drops it) or followed by another
    start with no end between them ends before that interval."""
    folder, config = machine
    from harken.agent.sinks.recent import MAINTENANCE, START, read_segment, segments
    (path,) = segments(store_folder(folder / "state", "fan"))
    seg = read_segment(path)
    records = seg.records.copy()
    records["flags"][at - 1] |= MAINTENANCE if flag == "maintenance" else START
    raw = path.read_bytes()
    head = len(raw) - len(seg.records) * seg.records.dtype.itemsize
    path.write_bytes(raw[:head] + records.tobytes())
    _, seq = _event(config)
    out = mark_normal(config, event=seq, operator="a", via="cli")
    assert out["intervals"] == list(range(1, at))


def test_intervals_are_told_apart_by_seq_and_time(machine, monkeypatch):
    """Finding 6: after the seq files were lost the seqs start again at 1; the new
    intervals (other audio, other times) were refused as "already in the bank", and
    recalibrate scored them with the old rows' held-out scores. Now an interval is its
    (seq, ts): both runs are stored, the new ones can be given, and recalibrate rescores
    the new ones as what they are (not marked normal)."""
    folder, config = machine
    stored0, seq = _event(config)
    given_seqs = set(mark_normal(config, event=seq, operator="a", via="cli")["intervals"])
    stored = _second_run(config, range(0, 12), 1, scale=1.05)
    assert len(stored) == 27 and stored.seq.tolist() == [*range(1, 16), *range(1, 13)]
    new = stored.ts[15:]
    out = mark_normal(config, start=float(new[0]), end=float(new[4]), operator="a", via="cli")
    assert out["intervals"] == [1, 2, 3, 4, 5]
    ov = read_overlay(overlay_file(folder / "state", "fan"), build(config)[0].model_id, "fan", 0)
    first = len(ov) - 5
    assert sorted(ov.ts[first:].tolist()) == new[:5].tolist()
    # the second run's intervals: 1..5 marked normal (left out: in the bank), 6..12 not
    # (rescored through the rule); the first run's not anomalous and not marked normal
    from harken.agent.operator import feedback
    monkeypatch.setattr(feedback, "MIN_INTERVALS", 1)
    first = [i for i in range(15) if not stored.has(ANOMALY)[i]
             and int(stored.seq[i]) not in given_seqs]
    rec = recalibrate(config, hours=1, operator="a", via="cli")
    assert rec["intervals"] == len(first) + 7


def test_a_log_that_cannot_be_written_refuses_before_any_change(machine, monkeypatch):
    """Finding 5: with audit.jsonl unwritable, feedback said "refused" yet wrote the
    overlay (and recalibrate the override). Now nothing is written; and an audit append
    that fails after the change (the disk filled in between) is reported done, warned."""
    folder, config = machine
    stored, seq = _event(config)
    log = folder / "state" / "audit.jsonl"
    log.mkdir()
    with pytest.raises(OSError):
        mark_normal(config, event=seq, operator="a", via="cli")
    assert not overlay_file(folder / "state", "fan").exists()
    log.rmdir()
    _normal_parts(config, stored)
    log.unlink()
    log.mkdir()
    with pytest.raises(OSError):
        recalibrate(config, hours=1, operator="a", via="cli")
    assert not config.override_file.exists()
    before = overlay_file(folder / "state", "fan").read_bytes()
    with pytest.raises(OSError):
        undo(config, operator="a", via="cli")
    assert overlay_file(folder / "state", "fan").read_bytes() == before
    log.rmdir()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(audit, "append", full)
    out = recalibrate(config, hours=1, operator="a", via="cli")
    assert "the audit log could not take its line (No space left on device)" in out["warning"]
    assert config.override_file.exists()
    out = undo(config, operator="a", via="cli")
    assert "audit log could not" in out["warning"]
    assert overlay_file(folder / "state", "fan").read_bytes() != before


def test_recalibrate_refuses_a_deaf_threshold(machine, monkeypatch):
    """Finding 7a: false_alarms_per_week = 1e-300 gave ok and a threshold of 490 against
    stored scores of at most 25. Refused below 0.01 a week; a threshold over 3 times the
    highest stored score is refused naming both numbers."""
    folder, config = machine
    _normal_parts(config, read_store(store_folder(folder / "state", "fan")))
    with pytest.raises(FeedbackError, match=r"false_alarms_per_week = 1e-300: expected at "
                       r"least 0.01"):
        recalibrate(config, hours=1, false_alarms_per_week=1e-300, operator="a", via="cli")
    from harken.agent.operator import feedback
    monkeypatch.setattr(feedback, "MIN_FALSE_ALARMS_PER_WEEK", 0.0)
    with pytest.raises(FeedbackError, match=r"the fitted threshold [\d.e+]+ is more than 4 "
                       r"times the highest score it was fitted on \([-\d.]+\)"):
        recalibrate(config, hours=1, false_alarms_per_week=1e-300, operator="a", via="cli")
    assert not config.override_file.exists()


def test_undo_after_a_recalibration_says_the_threshold_stays(machine):
    """Finding 7b: feedback, recalibrate, undo left the override fitted with the feedback's
    rows and said nothing (threshold before == after). The result now says so."""
    folder, config = machine
    _normal_parts(config, read_store(store_folder(folder / "state", "fan")))
    rec = recalibrate(config, hours=1, operator="a", via="cli")
    out = undo(config, operator="a", via="cli")
    assert out["threshold_after"] == rec["threshold_after"]
    assert f"the threshold is {rec['threshold_after']:.6g} (calibration " in out["note"]
    assert "recalibrate again" in out["note"]


def test_a_full_bank_says_how_to_make_room(machine, monkeypatch):
    """Finding 13: the bank-full refusal said "undo older feedback first", but undo takes
    back the newest only."""
    folder, config = machine
    from harken.agent.operator import feedback
    _, seq = _event(config)
    monkeypatch.setattr(feedback, "MAX_BANK_INTERVALS", 10)
    with pytest.raises(FeedbackError, match=r"more than a bank holds \(10\); give fewer "
                       r"intervals .* --undo \(newest first\)") as exc:
        mark_normal(config, event=seq, operator="a", via="cli")
    assert "older" not in str(exc.value)


# -- the second hostile round (issue 40) -----------------------------------------------------

@pytest.fixture(scope="module")
def near_copies(site, small_fan, general_bundle):
    """The bank statistics of near-copies of the enrollment clips (clips 0-3, 40 s each, as
    the hostile tester made them: 0.5 s out of alignment, plus a faint 120 Hz hum, plus
    N(0, 3e-3) noise), from one real run: {variant: (n, ...) statistics per name}."""
    from harken.training.data.corpus import scan
    folder, cfg, saved = site
    clips = [c for c in scan(small_fan, ["fan"], "train") if c.section == 0][:4]
    x = np.concatenate([read_wav(c.path, 16000)[0] * 1.0 for c in clips])
    t = np.arange(len(x)) / 16000
    variants = {"shifted": np.r_[x[8000:], x[:8000]],
                "hum": x + 0.01 * np.sin(2 * np.pi * 120 * t),
                "noise": x + np.random.default_rng(0).normal(0, 3e-3, x.shape)}
    wav = folder / "near.wav"
    write_wav(wav, np.concatenate(list(variants.values())).astype(np.float32), 16000)
    state = folder / "near-state"
    state.mkdir()
    (state / "enrolled-fan.npz").write_bytes(saved[next(p for p in saved
                                                        if p.name == "enrolled-fan.npz")])
    ncfg = write_agent_config(
        folder / "near.toml", agent={"node": "site", "machine": "fan", "state_dir": state},
        model={"bundle": general_bundle},
        audio={"source": "file", "file": wav, "realtime": False},   # statistics only (2 min)
        output={"stdout": False}, decision={"interval_s": 2})
    assert run_config(load_config(ncfg)) == 0
    stored = read_store(store_folder(state, "fan"))
    per = len(stored) // 3
    return {name: {k: np.stack([s[k] for s in stored.statistics[i * per:(i + 1) * per]])
                   for k in stored.statistics[0]} for i, name in enumerate(variants)}


def _append(config, statistics, seq0, gap_s=5.0):
    """Intervals with these statistics (per name, (n, width)) appended to the store as a
    run of their own, none anomalous; returns their times."""
    from harken.agent.sinks.recent import RecentStore
    state = config.path(config.agent.state_dir)
    stored = read_store(store_folder(state, "fan"))
    bundle = build(config)[0]
    store = RecentStore(store_folder(state, "fan"), 24, 64)
    t = float(stored.ts.max()) + gap_s
    n = len(next(iter(statistics.values())))
    for i in range(n):
        store.add(IntervalResult(
            t + 0.01 * i, seq0 + i, 0.0, float(stored.threshold[0]), False, 2.0,
            bundle.model_id, "test", "ok", -30.0, 1, 0.0,
            statistics={k: v[i] for k, v in statistics.items()}))
    store.close()
    return t, t + 0.01 * (n - 1)


@pytest.mark.parametrize("variant, before", [("shifted", 16.27), ("hum", 138.7),
                                             ("noise", 42.3)])
def test_normal_feedback_never_makes_the_machine_deaf_nor_more_alarming(
        machine, anomalies, near_copies, variant, before):
    """Finding 1 (second round): near-copies of the enrollment clips marked normal
    (``--from 0 --to 9999999999 normal``) moved the threshold 7.75 -> ``before`` (the hum:
    0 of 50 anomalies above it), and the own rows' densities shrank, so every live score
    rose. Now the own rows keep their densities and the threshold is kept: no score
    rises, the anomalies flagged stay flagged, undo gives the old bank bit for bit."""
    folder, config = machine
    stored = read_store(store_folder(folder / "state", "fan"))
    arrays0, threshold0 = _state(config)
    rule0, _ = live_state(config, build(config)[0])
    start, end = _append(config, near_copies[variant], 100)
    out = mark_normal(config, start=start, end=end, operator="a", via="cli")
    assert len(out["intervals"]) == len(near_copies[variant]["mel"])
    rule1, threshold1 = live_state(config, build(config)[0])
    assert out["threshold_before"] == out["threshold_after"] == threshold1 == threshold0
    site_rows = {k: np.stack([s[k] for s in stored.statistics]) for k in stored.statistics[0]}
    for rows in (anomalies, site_rows):
        assert np.all(rule1.score_statistics(rows) <= rule0.score_statistics(rows) + 1e-9)
    flagged0 = rule0.score_statistics(anomalies) > threshold0
    assert flagged0.sum() >= 10
    assert np.array_equal(rule1.score_statistics(anomalies) > threshold1, flagged0)
    undo(config, operator="a", via="cli")
    arrays2, threshold2 = _state(config)
    assert threshold2 == threshold0
    assert all(np.array_equal(arrays2[k], arrays0[k]) for k in arrays0)


def test_a_time_range_leaves_maintenance_out(machine):
    """Finding 6 (second round): ``--from/--to`` took intervals in maintenance (a fitter's
    hammering) into the bank; ``--event`` and recalibrate left them out."""
    folder, config = machine
    flags = ["", "", "maintenance", "maintenance", "maintenance", ""]
    stored = _second_run(config, range(5, 11), 40, flags, scale=1.2)
    out = mark_normal(config, start=float(stored.ts[-6]), end=float(stored.ts[-1]),
                      operator="a", via="cli")
    assert out["intervals"] == [40, 41, 45]
    just = _second_run(config, range(0, 2), 60, ("maintenance", "maintenance"), gap_s=50)
    with pytest.raises(FeedbackError, match="no interval stored in the range .* out of "
                       "maintenance"):
        mark_normal(config, start=float(just.ts[-2]), end=float(just.ts[-1]), operator="a",
                    via="cli")


def test_recalibrate_refuses_a_threshold_its_outliers_moved(machine, monkeypatch):
    """Finding 2b (second round): one interval scoring far above the others put the
    threshold at 77.18 ("without them 9.05" in the warning), written anyway. Refused now,
    with both numbers; nothing written."""
    folder, config = machine
    _quiet_run(config)
    stored = read_store(store_folder(folder / "state", "fan"))
    loud = {k: v * 3.0 for k, v in stored.statistics[-1].items()}
    _append(config, {k: np.stack([v, v * 1.01]) for k, v in loud.items()}, 300)
    with pytest.raises(FeedbackError, match=r"the fitted threshold [-\d.e+]+ is more than 2 "
                       r"times the [-\d.e+]+ it would be without its 2 outlier interval"):
        recalibrate(config, hours=1, operator="a", via="cli")
    assert not config.override_file.exists()


def test_unreadable_segments_and_a_file_at_the_store_are_said(machine, caplog):
    """Finding 9 (second round): a damaged segment was skipped silently by ``--events``,
    feedback and recalibrate; a file at recent-M gave a raw "[Errno 20]" or "cannot write
    the state". Now one warning line names the segments (and the reply carries it), and a
    file there is "not a folder"."""
    folder, config = machine
    from harken.agent.operator.feedback import recent_events
    _, seq = _event(config)
    bad = store_folder(folder / "state", "fan") / "20270115T08-000000000099.seg"
    bad.write_bytes(bytes(100))
    out = subprocess.run([sys.executable, "-m", "harken.agent.cli", "feedback", "--config",
                          str(config.source_file), "--events"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr
    warned = [line for line in out.stderr.splitlines() if bad.name in line]
    assert len(warned) == 1 and "could not be read" in warned[0]
    with caplog.at_level("WARNING"):
        got = mark_normal(config, event=seq, operator="a", via="cli")
    assert bad.name in got["store_warning"] and bad.name in caplog.text
    bad.unlink()
    import shutil
    shutil.rmtree(store_folder(folder / "state", "fan"))
    store_folder(folder / "state", "fan").write_text("x")
    for call in (lambda: recent_events(config), lambda: undo(config, operator="a", via="cli")
                 and mark_normal(config, event=seq, operator="a", via="cli"),
                 lambda: recalibrate(config, operator="a", via="cli")):
        with pytest.raises(FeedbackError, match=r"recent-fan: not a folder"):
            call()


def test_how_an_event_ended_is_said_for_the_operator():
    """``--events``'s ``ended_by``: an end event, maintenance (which ends a running event),
    a restart (the agent never said the end: the first interval of a new run follows), or
    still on as far as the store heard (None)."""
    from types import SimpleNamespace

    from harken.agent.operator.feedback import _ended_by, _event_span
    from harken.agent.sinks.recent import END, FIRST, MAINTENANCE, Stored

    config = SimpleNamespace(decision=SimpleNamespace(n=3, interval_s=10.0))

    def store(flags):
        n = len(flags)
        return Stored(seq=np.arange(1, n + 1), ts=10.0 * np.arange(n), score=np.ones(n),
                      threshold=np.zeros(n), flags=np.array(flags, np.uint32))

    cases = {"end event": [START, 0, END, 0], "maintenance": [START, 0, MAINTENANCE | END, 0],
             "restart": [START, 0, FIRST, 0], None: [0, START, 0, 0]}
    for said, flags in cases.items():
        s = store(flags)
        i = int(np.nonzero(s.has(START))[0][0])
        _, hi = _event_span(s, i, config)
        assert _ended_by(s, hi, config) == said, (said, flags)
