"""The records the device keeps across upgrades, each a typed model with a version: an
enrolled bank's manifest (agent/model/bank.py) and a calibration override
(agent/decision/override.py). The files under tests/data/records/ were written by the
release of commit 61a0e3e (tests/data/records/make_records.py): they must keep loading, with
the values they were written with, and a damaged record is refused in one line naming the
file, the key and what to do."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harken.agent.decision.override import (CalibrationOverride, load_override, read_override,
                                            write_override)
from harken.agent.model.bank import BankError, BankManifest, load_bank, write_bank
from harken.agent.sources.wavio import write_wav
from harken.common.errors import ConfigError
from tests.data.records.make_records import RATE, fan
from harken.testkit.files import write_agent_config

RECORDS = Path(__file__).resolve().parents[1] / "data" / "records"
BANK_V1 = RECORDS / "enrolled-fan-v1.npz"
OVERRIDE_V0 = RECORDS / "threshold-fan-v1.json"
MODEL = "spectral-knn-general-2b63a589"       # the general bundle's id (its feature spec's)


def test_a_bank_enrolled_by_the_earlier_release_loads_with_its_values():
    arrays, m = load_bank(BANK_V1)
    assert isinstance(m, BankManifest)
    assert (m.version, m.model, m.machine) == (1, MODEL, "fan")
    assert (m.intervals, m.audio_s, m.skipped_intervals, m.interval_s) == (8, 80.0, 0, 10.0)
    assert [(s.source, s.intervals, s.created) for s in m.sessions] == [
        ("1 file(s)", 6, "2026-12-05T07:52:49+00:00"), ("1 file(s)", 2, "2026-12-05T07:52:51+00:00")]
    assert m.threshold == 9.285089519399948 and m.false_alarms_per_week == 1.0
    assert (m.gamma.shape, m.gamma.loc, m.gamma.scale) == (
        1.560511995412707, -1.3138421906918647, 0.8419302091583064)
    assert m.threshold_how == "gamma fit of the intervals' leave-one-out scores"
    assert arrays["raw_mel"].shape == (8, 256) and arrays["raw_spectrum"].shape == (8, 513)
    assert "manifest" not in arrays


def test_the_bank_writer_writes_the_same_manifest_the_earlier_release_wrote(tmp_path):
    """Version 1 is unchanged: the same arrays and manifest, written again, are the same
    bytes of manifest, and load back equal."""
    arrays, m = load_bank(BANK_V1)
    write_bank(tmp_path / "bank.npz", arrays, m)
    with np.load(BANK_V1) as old, np.load(tmp_path / "bank.npz") as new:
        assert new["manifest"].tobytes() == old["manifest"].tobytes()
        assert sorted(new.files) == sorted(old.files)
    again, m2 = load_bank(tmp_path / "bank.npz")
    assert m2 == m and all(np.array_equal(again[k], arrays[k]) for k in arrays)
    with pytest.raises(ValueError, match="sha256 is not that of the arrays"):   # a bug, not a user's
        write_bank(tmp_path / "x.npz", {**arrays, "mel_bank": arrays["mel_bank"] + 1}, m)
    from harken.agent.model.bank import bank_digest
    nan = {**arrays, "mel_std": np.full_like(arrays["mel_std"], np.nan)}
    with pytest.raises(ValueError, match="array 'mel_std' holds NaN or infinite values"):
        write_bank(tmp_path / "x.npz", nan, m.model_copy(update={"sha256": bank_digest(nan, 1)}))


def test_an_override_calibrated_by_the_earlier_release_loads_migrated(tmp_path):
    o = load_override(OVERRIDE_V0)
    assert isinstance(o, CalibrationOverride)
    assert o.version == 1                        # unversioned: version 1's keys
    assert o.threshold == 30.1264578497618
    assert (o.false_alarms_per_week, o.interval_s, o.intervals, o.skipped_intervals) == (
        1.0, 10.0, 11, 0)
    assert o.exceedance_per_interval == 1.6534391534391536e-05
    assert (o.score_mean, o.score_max) == (5.750349564710863, 8.965918602748761)
    assert (o.gamma.shape, o.gamma.loc, o.gamma.scale) == (
        2.0373292500721463, 1.5241398970221929, 2.074387175042527)
    assert (o.model, o.bundle_threshold, o.source, o.channel, o.created) == (
        MODEL, None, "files", None, "2026-12-05T07:52:54+00:00")
    # written again it is the same JSON with its version
    write_override(tmp_path / "t.json", o)
    assert json.loads((tmp_path / "t.json").read_text()) == {
        "version": 1, **json.loads(OVERRIDE_V0.read_text())}
    assert load_override(tmp_path / "t.json") == o


class _Machine:
    def __init__(self, path: Path) -> None:
        self.override_file = path


def _manifest() -> dict:
    with np.load(BANK_V1) as z:
        return json.loads(z["manifest"].tobytes())


def _with(data: dict, key: str, value) -> dict:
    """``data`` with ``key`` (``a.0.b`` reaches into lists) set, or removed for ...."""
    data = json.loads(json.dumps(data))
    *path, last = key.split(".")
    at = data
    for p in path:
        at = at[int(p)] if isinstance(at, list) else at[p]
    if value is ...:
        del at[last]
    else:
        at[last] = value
    return data


def _bank_with(tmp_path: Path, raw: bytes) -> Path:
    with np.load(BANK_V1) as z:
        arrays = {k: z[k] for k in z.files if k != "manifest"}
    path = tmp_path / "enrolled-fan.npz"
    np.savez(path, manifest=np.frombuffer(raw, np.uint8), **arrays)
    return path


@pytest.mark.parametrize("key, value, why", [
    ("threshold", ..., "key 'threshold' missing; enroll again"),
    ("threshold", math.nan, "key 'threshold' = nan: Input should be a finite number"),
    ("threshold", math.inf, "key 'threshold' = inf: Input should be a finite number"),
    ("threshold", "high", "key 'threshold' = 'high': Input should be a valid number"),
    ("audio_s", -1.0, "key 'audio_s' = -1.0: Input should be greater than 0"),
    ("intervals", 8.5, "key 'intervals' = 8.5: Input should be a valid integer"),
    ("sessions", [], "key 'sessions' = []: List should have at least 1 item"),
    ("sessions.1.created", "yesterday", "key 'sessions.1.created' = 'yesterday': Value error, "
                                        "not an ISO 8601 time"),
    ("gamma.scale", None, "key 'gamma.scale' = None: Input should be a valid number"),
    ("colour", "blue", "unknown key 'colour'"),
    ("version", ..., "key 'version' missing"),
    ("version", "1", "key 'version' = '1': not a version number; enroll again"),
    ("version", 3, "version 3 is newer than this harken reads (2); upgrade harken, or enroll "
                   "again"),
])
def test_a_damaged_bank_manifest_is_one_line_naming_the_file_and_key(tmp_path, key, value, why):
    path = _bank_with(tmp_path, json.dumps(_with(_manifest(), key, value)).encode())
    with pytest.raises(BankError) as err:
        load_bank(path)
    message = str(err.value)
    assert message.startswith(f"{path}: the bank's manifest: ") and why in message
    assert "\n" not in message and message.endswith("enroll again")


@pytest.mark.parametrize("raw, why", [
    (b"[1, 2]", "not a JSON object but list"),
    (b"{", "not JSON (Expecting property name"),
    (b"\xff\xfe", "not JSON ("),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
def test_a_bank_manifest_that_is_not_one_is_refused(tmp_path, raw, why):
    path = _bank_with(tmp_path, raw)
    with pytest.raises(BankError) as err:
        load_bank(path)
    message = str(err.value)
    assert message.startswith(f"{path}: the bank's manifest") and why in message
    assert message.endswith("enroll again") and "\n" not in message


@pytest.mark.parametrize("content, why", [
    ("{", "unreadable (Expecting property name"),
    ("[]", "unreadable (not a JSON object but list)"),
    ("[" * 100_000 + "]" * 100_000, "unreadable (nested too deeply to be one)"),
    ('{"threshold": 1.5}', "unreadable (key 'false_alarms_per_week' missing)"),
    ({"threshold": None}, "unreadable (key 'threshold' = None: Input should be a valid number)"),
    ({"threshold": "high"}, "unreadable (key 'threshold' = 'high': Input should be a valid "
                            "number)"),
    ({"threshold": math.nan}, "unreadable (key 'threshold' = nan: Input should be a finite "
                              "number)"),
    ({"threshold": -math.inf}, "unreadable (key 'threshold' = -inf: Input should be a finite "
                               "number)"),
    ({"threshold": ...}, "unreadable (key 'threshold' missing)"),
    ({"quantile": 0.99}, "unreadable (unknown key 'quantile')"),
    ({"channel": -1}, "unreadable (key 'channel' = -1: Input should be greater than or equal "
                      "to 0)"),
    ({"version": 1.0}, "unreadable (key 'version' = 1.0: not a version number)"),
    ({"version": 3}, "version 3 is newer than this harken reads (2); upgrade harken, or delete"),
])
def test_a_damaged_override_is_one_line_saying_what_to_do(tmp_path, content, why):
    """``content``: the file's text, or the earlier release's override with these keys
    changed (``...``: removed)."""
    machine = _Machine(tmp_path / "state" / "threshold-fan.json")
    assert read_override(machine) is None                       # none written yet
    machine.override_file.parent.mkdir()
    if isinstance(content, dict):
        data = json.loads(OVERRIDE_V0.read_text())
        for key, value in content.items():
            data = _with(data, key, value)
        content = json.dumps(data)
    machine.override_file.write_text(content)
    with pytest.raises(ConfigError) as err:
        read_override(machine)
    message = str(err.value)
    assert message.startswith(f"{machine.override_file}: calibration override ")
    assert why in message and "\n" not in message
    assert message.endswith("delete it or run 'harken calibrate' again")


def test_the_config_module_still_offers_read_override():
    from harken.agent import config
    assert config.read_override is read_override


@pytest.fixture
def installed(general_bundle, tmp_path):
    """A device as the earlier release left it: a general bundle, its enrolled bank and a
    calibration override in the state folder, and 20 s of the fan it was enrolled on."""
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(BANK_V1, state / "enrolled-fan.npz")
    shutil.copy(OVERRIDE_V0, state / "threshold-fan.json")
    write_wav(tmp_path / "fan-c.wav", fan(20, 3), RATE)
    cfg = write_agent_config(
        tmp_path / "agent.toml", agent={"node": "site", "machine": "fan", "state_dir": state},
        model={"bundle": general_bundle},
        audio={"source": "file", "file": tmp_path / "fan-c.wav", "realtime": False},
        decision={"interval_s": 10})
    return tmp_path, cfg


def harken(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harken.agent.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_a_device_upgraded_from_the_earlier_release_runs_as_it_did(installed):
    """check-config and run on the earlier release's records: the override's threshold,
    the bank's sessions, and the scores the earlier release gave the same audio."""
    folder, cfg = installed
    r = harken("check-config", cfg, cwd=folder)
    assert r.returncode == 0, r.stderr
    resolved = json.loads(r.stdout)["resolved"]
    assert resolved["model"] == MODEL
    assert resolved["threshold"] == 30.1264578497618
    assert resolved["threshold_from"] == f"calibration {folder / 'state' / 'threshold-fan.json'}"
    assert resolved["bank"] == {
        "file": str(folder / "state" / "enrolled-fan.npz"), "audio_s": 80.0, "intervals": 8,
        "sessions": [{"source": "1 file(s)", "intervals": 6, "created": "2026-12-05T07:52:49+00:00"},
                     {"source": "1 file(s)", "intervals": 2, "created": "2026-12-05T07:52:51+00:00"}]}
    r = harken("run", "--config", cfg, cwd=folder)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    started = next(x for x in lines if x.get("status") == "started")
    assert started["bank"] == {"enrolled": True, "audio_s": 80.0, "intervals": 8,
                               "created": "2026-12-05T07:52:51+00:00"}
    assert started["threshold"] == 30.1264578497618
    scores = [x["score"] for x in lines if x["kind"] == "score"]
    # the earlier release scored both -52.569645; the DC offset is now removed before the
    # features (docs/agent.md "Audio health"), which moves the stream's first interval most;
    # the second holds the frames centred in its 10 s (docs/agent.md "Report intervals"):
    # from frame 313 on, where it began at 312 (-52.193663 then); the DC estimate now keeps
    # 0.1-s block sums, the oldest block fading out sample by sample (agent/sources/dc.py),
    # which moved the second interval by 1.4e-4 of its score
    assert scores == pytest.approx([-49.286622, -48.725278], rel=1e-4)
    assert all(s < started["threshold"] for s in scores)             # the same verdicts

    # without the override the bank's own threshold decides
    (folder / "state" / "threshold-fan.json").unlink()
    resolved = json.loads(harken("check-config", cfg, cwd=folder).stdout)["resolved"]
    assert resolved["threshold"] == 9.285089519399948
    assert resolved["threshold_from"].startswith("enrollment")


def test_a_damaged_record_stops_the_device_in_one_line(installed):
    folder, cfg = installed
    override = folder / "state" / "threshold-fan.json"
    override.write_text(override.read_text().replace("30.1264578497618", "NaN"))
    r = harken("run", "--config", cfg, cwd=folder)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"harken: error: {override}: calibration override unreadable (key 'threshold' = nan: "
        f"Input should be a finite number); delete it or run 'harken calibrate' again"]
    override.unlink()
    bank = folder / "state" / "enrolled-fan.npz"
    with np.load(bank) as z:
        arrays = dict(z)
    manifest = json.loads(arrays.pop("manifest").tobytes())
    del manifest["sessions"]
    np.savez(bank, manifest=np.frombuffer(json.dumps(manifest).encode(), np.uint8), **arrays)
    r = harken("check-config", cfg, cwd=folder)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert f"{bank}: the bank's manifest: key 'sessions' missing; enroll again" in r.stderr


def test_an_override_of_another_model_or_interval_is_refused_and_calibrate_replaces_it(
        installed):
    """A threshold holds for the model and the interval it was fitted at: an override of
    another model (a re-exported bundle) or of another interval length is refused in one
    line saying what to do, and ``harken calibrate``, which writes a new one, does not
    read the old (a damaged one no longer blocks its own replacement)."""
    folder, cfg = installed
    override = folder / "state" / "threshold-fan.json"
    good = override.read_text()
    override.write_text(good.replace(f'"model": "{MODEL}"', '"model": "ae-fan-0123abcd"'))
    r = harken("check-config", cfg, cwd=folder)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"harken: error: {override}: calibrated for model 'ae-fan-0123abcd', but the bundle "
        f"is '{MODEL}'; run 'harken calibrate' again (or delete the file to use the bundle's "
        f"threshold)"]
    override.write_text(good)
    five = cfg.with_name("five.toml")
    five.write_text(cfg.read_text().replace("interval_s = 10", "interval_s = 5"))
    r = harken("check-config", five, cwd=folder)
    assert r.returncode == 2 and "calibrated at 10-s intervals, but decision.interval_s = 5" \
        in r.stderr and "Traceback" not in r.stderr

    override.write_text(good.replace("30.1264578497618", "NaN"))       # damaged
    write_wav(folder / "fan-long.wav", fan(120, 5), RATE)
    r = harken("calibrate", "--config", cfg, "--files", folder / "fan-long.wav", "--no-plot",
               cwd=folder)
    assert r.returncode == 0, r.stderr
    assert json.loads(override.read_text())["version"] == 2        # now bound to its machine
    r = harken("check-config", cfg, cwd=folder)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["resolved"]["threshold_from"].startswith("calibration")


def test_a_bank_without_the_arrays_of_its_rule_names_its_file(installed):
    """The sha256 of a bank covers what it holds, not what its rule needs: a bank that
    lost an array (and was re-hashed) is refused naming the file, not with a bare "rule
    needs arrays"."""
    from harken.agent.model.bank import bank_digest
    folder, cfg = installed
    (folder / "state" / "threshold-fan.json").unlink()
    bank = folder / "state" / "enrolled-fan.npz"
    with np.load(bank) as z:
        arrays = dict(z)
    manifest = json.loads(arrays.pop("manifest").tobytes())
    dropped = next(k for k in sorted(arrays) if not k.startswith("raw_"))
    del arrays[dropped]
    manifest["sha256"] = bank_digest(arrays, 1)          # the earlier release's bank
    np.savez(bank, manifest=np.frombuffer(json.dumps(manifest).encode(), np.uint8), **arrays)
    r = harken("check-config", cfg, cwd=folder)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"harken: error: {bank}: score rule") and "enroll again" in r.stderr



def _v2_bank(path: Path, machine: str = "fan", model: str = MODEL) -> None:
    """The earlier release's bank written again as version 2 (its sha256 binding the
    version, the model and the machine)."""
    from harken.agent.model.bank import bank_digest
    arrays, m = load_bank(BANK_V1)
    m = m.model_copy(update={"version": 2, "machine": machine, "model": model,
                             "sha256": bank_digest(arrays, 2, model, machine)})
    write_bank(path, arrays, m)


def test_a_bank_swapped_between_two_machines_is_refused_in_one_line(installed):
    """Two machines' banks swapped (the state folders copied crosswise) were accepted
    silently: the bank's manifest named the other machine and was outside the sha256."""
    folder, cfg = installed
    state = folder / "state"
    (state / "threshold-fan.json").unlink()
    pump = cfg.with_name("pump.toml")
    pump.write_text(cfg.read_text().replace('machine = "fan"', 'machine = "pump"'))
    shutil.copy(state / "enrolled-fan.npz", state / "enrolled-pump.npz")   # version 1
    r = harken("check-config", pump, cwd=folder)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"harken: error: {state / 'enrolled-pump.npz'}: enrolled for machine 'fan', but this "
        f"is machine 'pump' (a bank copied from another machine?); enroll this machine"]
    # version 2: the machine is inside the sha256, so renaming it in the manifest fails too
    _v2_bank(state / "enrolled-pump.npz")
    with np.load(state / "enrolled-pump.npz") as z:
        arrays = dict(z)
    manifest = json.loads(arrays.pop("manifest").tobytes())
    assert manifest["version"] == 2
    manifest["machine"] = "pump"
    np.savez(state / "enrolled-pump.npz",
             manifest=np.frombuffer(json.dumps(manifest).encode(), np.uint8), **arrays)
    r = harken("check-config", pump, cwd=folder)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "enrolled-pump.npz: the arrays do not match the bank's sha256" in r.stderr
    _v2_bank(state / "enrolled-fan.npz")                 # a good version-2 bank runs
    assert harken("check-config", cfg, cwd=folder).returncode == 0


def test_an_override_is_bound_to_its_machine_and_its_digest(installed, tmp_path):
    """A version-2 override (what calibrate writes now) names its machine inside its
    sha256: copied to another machine, or its threshold edited by hand, it is refused."""
    folder, cfg = installed
    state = folder / "state"
    old = load_override(state / "threshold-fan.json")
    fields = {k: v for k, v in old.model_dump().items() if k not in ("version", "machine",
                                                                      "sha256")}
    fresh = CalibrationOverride.create(**fields, machine="fan")
    assert fresh.version == 2 and fresh.sha256 == fresh.digest()
    write_override(state / "threshold-fan.json", fresh)
    r = harken("check-config", cfg, cwd=folder)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["resolved"]["threshold"] == fresh.threshold

    pump = cfg.with_name("pump.toml")
    pump.write_text(cfg.read_text().replace('machine = "fan"', 'machine = "pump"'))
    _v2_bank(state / "enrolled-pump.npz", machine="pump")
    shutil.copy(state / "threshold-fan.json", state / "threshold-pump.json")
    r = harken("check-config", pump, cwd=folder)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"harken: error: {state / 'threshold-pump.json'}: calibrated for machine 'fan', but "
        f"this is machine 'pump' (copied from another machine?); run 'harken calibrate' again "
        f"(or delete the file to use the bundle's threshold)"]
    data = json.loads((state / "threshold-pump.json").read_text())
    data["machine"] = "pump"                              # renamed by hand: not its digest
    (state / "threshold-pump.json").write_text(json.dumps(data))
    r = harken("check-config", pump, cwd=folder)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"harken: error: {state / 'threshold-pump.json'}: calibration override changed since "
        f"it was written (its sha256 does not match what it says); delete it or run 'harken "
        f"calibrate' again"]
    del data["machine"]
    (state / "threshold-pump.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"unreadable \(key 'version' = 2: Value error, key "
                                          r"'machine' missing \(version 2\)\)|key 'machine' "
                                          r"missing"):
        load_override(state / "threshold-pump.json")


def test_an_override_or_bank_that_is_a_folder_is_refused_not_ignored(installed):
    """A folder where the override goes was read as "no override": the bundle's threshold
    was used without a word. Now run refuses, and calibrate says to move it away."""
    folder, cfg = installed
    state = folder / "state"
    (state / "threshold-fan.json").unlink()
    (state / "threshold-fan.json").mkdir()
    r = harken("check-config", cfg, cwd=folder)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"harken: error: {state / 'threshold-fan.json'}: calibration override is not a file; "
        f"move it away or run 'harken calibrate' again"]
    write_wav(folder / "fan-long.wav", fan(120, 5), RATE)
    r = harken("calibrate", "--config", cfg, "--files", folder / "fan-long.wav", "--no-plot",
               "--quiet", cwd=folder)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{state / 'threshold-fan.json'}: is a folder, where the calibration override goes" \
        in r.stderr
    (state / "threshold-fan.json").rmdir()
    (state / "enrolled-fan.npz").unlink()
    (state / "enrolled-fan.npz").mkdir()
    r = harken("check-config", cfg, cwd=folder)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"harken: error: {state / 'enrolled-fan.npz'}: not a file; move it away and enroll "
        f"again"]


def test_a_bank_without_its_manifest_is_one_line(tmp_path):
    path = tmp_path / "enrolled-fan.npz"
    with np.load(BANK_V1) as z:
        np.savez(path, **{k: z[k] for k in z.files if k != "manifest"})
    with pytest.raises(BankError) as err:
        load_bank(path)
    assert str(err.value).startswith(f"{path}: the bank holds no manifest (arrays ")
    assert str(err.value).endswith("enroll again") and "\n" not in str(err.value)
