"""``harken calibrate`` (and enroll) under the inputs a hostile tester gave them (issue 37):
the recordings a bank was enrolled from, an interval that drops out half way, a config
whose own threshold wins, the same file given eleven times, a plot format matplotlib does
not know. Each is refused or said in one line, before anything is written where refused."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from harken.agent.decision.health import check_audio
from harken.agent.decision.thresholds import false_alarm_threshold, fit_gamma, outliers
from harken.agent.sources.wavio import read_wav, write_wav
from harken.common.errors import DataError
from harken.testkit.files import write_agent_config

RATE = 16000


def harken(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harken.agent.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture
def clips(small_fan):
    """The fan's section-0 normal training clips (10 s each)."""
    from harken.training.data.corpus import scan
    return [c.path for c in scan(small_fan, ["fan"], "train") if c.section == 0]


def config(folder, bundle, interval_s=2, wav=None, **decision):
    return write_agent_config(
        folder / "agent.toml",
        agent={"node": "site", "machine": "fan", "state_dir": folder / "state"},
        model={"bundle": bundle}, audio={"source": "file", "file": wav or folder / "x.wav"},
        decision={"interval_s": interval_s, **decision})


def test_calibrating_on_the_enrolled_audio_is_refused_and_enroll_sets_the_old_one_aside(
        general_bundle, clips, tmp_path):
    """Calibrating on the recordings the bank was enrolled from gave every interval the
    same score (-38.58) and wrote that as the threshold: all other normal audio alarmed.
    Refused now, saying why, before anything is written. And a calibration of an old bank
    no longer outlives a new enrollment: enroll sets it aside, in one line."""
    cfg = config(tmp_path, general_bundle, wav=clips[-1])
    enrolled, other = clips[:3], clips[3:6]
    r = harken("enroll", "--config", cfg, "--files", *enrolled, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    override = tmp_path / "state" / "threshold-fan.json"
    r = harken("calibrate", "--config", cfg, "--files", *enrolled, "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "calibration of fan: the 15 scores do not vary" in r.stderr
    assert "the ones the bank was enrolled from" in r.stderr and "Nothing was written" in r.stderr
    assert not override.exists() and not (tmp_path / "state" / "calibration.png").exists()

    r = harken("calibrate", "--config", cfg, "--files", *other, "--no-plot", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    calibrated = json.loads(r.stdout)["threshold"]
    assert calibrated > max(json.loads(r.stdout)["score_mean"], 0)
    r = harken("check-config", cfg, cwd=tmp_path)
    assert json.loads(r.stdout)["resolved"]["threshold_from"].startswith("calibration")

    # a new bank: the calibration against the old one is set aside, not left in force
    r = harken("enroll", "--config", cfg, "--files", *other, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert not override.exists()
    [aside] = (tmp_path / "state").glob("threshold-fan.json.before-enroll-*")
    assert out["override_set_aside"] == str(aside)
    assert json.loads(aside.read_text())["threshold"] == calibrated
    said = [line for line in r.stderr.splitlines() if "set aside" in line]
    assert len(said) == 1 and "calibrate again" in said[0]
    r = harken("check-config", cfg, cwd=tmp_path)
    resolved = json.loads(r.stdout)["resolved"]
    assert resolved["threshold_from"].startswith("enrollment")
    assert resolved["threshold"] == out["threshold"]


def test_an_interval_that_drops_out_is_flagged_and_left_out_of_the_fit(ae_bundle, clips,
                                                                         tmp_path):
    """A 10-s interval whose last 5 s are digital zero was 'ok' (the median of its 0.1-s
    pieces was not silent) and scored 9009; one such interval in a calibration moved the
    threshold from 18.7 to 15 228. It is a 'dropout' now: run reports it unscored, and
    calibrate leaves it out, counted, with the same threshold as without it."""
    x, _ = read_wav(clips[0], RATE)
    half = x.copy()
    half[len(x) // 2:] = 0
    dropped = tmp_path / "half_silent.wav"
    write_wav(dropped, half, RATE)
    assert check_audio(half).status == "dropout"
    assert check_audio(x).status == "ok"
    for pieces, status in ((9, "ok"), (10, "dropout")):        # the 10 % rule, 0.1-s pieces
        cut = x.copy()
        cut[:pieces * 1600] = 0
        assert check_audio(cut).status == status
    assert check_audio(np.zeros_like(x)).status == "silent"

    cfg = config(tmp_path, ae_bundle, interval_s=10)
    normal = [str(c) for c in clips[:10]]
    r = harken("calibrate", "--config", cfg, "--files", *normal, "--no-plot", "--quiet",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    without = json.loads(r.stdout)
    r = harken("calibrate", "--config", cfg, "--files", *normal, dropped, "--no-plot",
               "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert (got["intervals"], got["skipped_intervals"]) == (10, 1)
    assert got["threshold"] == pytest.approx(without["threshold"])

    # run says the same of that interval: status dropout, no score, no alarm
    run_cfg = write_agent_config(
        tmp_path / "run.toml", agent={"node": "site", "machine": "fan",
                                      "state_dir": tmp_path / "state"},
        model={"bundle": ae_bundle},
        audio={"source": "file", "file": dropped, "realtime": False},
        decision={"interval_s": 10}, output={"stdout": True})
    r = harken("run", "--config", run_cfg, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    [score] = [json.loads(line) for line in r.stdout.splitlines()
               if json.loads(line).get("kind") == "score"]
    assert (score["status"], score["score"], score["anomaly"]) == ("dropout", None, False)


def test_an_outlier_in_the_fit_is_warned_about_with_the_threshold_without_it(caplog):
    """One loud interval among normal ones pulls the gamma's tail far out; the fit is
    kept (it may be real operation) but said, with the threshold the others give."""
    rng = np.random.default_rng(0)
    scores = rng.gamma(4.0, 2.0, 200) + 5
    threshold, _, _ = false_alarm_threshold(scores, 1.0, 10)
    assert outliers(scores, threshold, 1.0, 10, "calibration of fan") == {}
    loud = np.append(scores, 9009.0)
    high, _, _ = false_alarm_threshold(loud, 1.0, 10)
    got = outliers(loud, high, 1.0, 10, "calibration of fan")
    assert got["outlier_intervals"] == 1
    assert got["threshold_without_outliers"] == pytest.approx(threshold)
    assert got["threshold_without_outliers"] < high / 5
    assert "1 of the 201 intervals score far above the others (highest 9009" \
        in got["outlier_warning"]
    assert any("WARNING: calibration of fan: 1 of the 201" in m for m in caplog.messages)


def test_degenerate_fits_are_refused_as_one_line():
    """Equal scores whose float spread is not quite 0 reached scipy, which raised its
    FitDataError (a traceback); a threshold at or below the median is refused too."""
    same = np.full(11, 15.063)
    assert np.std(same) > 0                        # the case that reached scipy
    with pytest.raises(DataError, match="do not vary"):
        false_alarm_threshold(same, 1.0, 10)
    with pytest.raises(DataError, match="a gamma does not fit|are equal"):
        fit_gamma(same)
    bank_like = -38.5799 + np.random.default_rng(1).normal(0, 1e-7, 12)
    with pytest.raises(DataError, match="calibrate on other normal audio"):
        false_alarm_threshold(bank_like, 1.0, 10, "calibration of fan",
                              "calibrate on other normal audio")


def test_calibrate_says_the_config_threshold_stays_in_force(ae_bundle, clips, tmp_path):
    """With decision.threshold set, the override was written and nothing said that run
    keeps the config's value: said now, in the result and as one warning line."""
    cfg = config(tmp_path, ae_bundle, interval_s=10, wav=clips[-1], threshold=50)
    r = harken("calibrate", "--config", cfg, "--files", *clips[:10], "--no-plot", "--quiet",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "decision.threshold = 50 is set, so 'harken run' keeps using it" \
        in out["threshold_in_force"]
    said = [line for line in r.stderr.splitlines() if "decision.threshold = 50" in line]
    assert len(said) == 1 and str(cfg) in said[0]
    r = harken("check-config", cfg, cwd=tmp_path)
    assert json.loads(r.stdout)["resolved"]["threshold"] == 50


def test_a_device_install_without_matplotlib_refuses_the_plot_formats_a_workstation_refuses(
        monkeypatch):
    """The arm64 device install (no matplotlib) took ``--plot x.unknownext`` (exit 0): the
    check now uses the fixed list of matplotlib's formats there, the same list matplotlib
    itself gives where it is installed."""
    from harken.agent.site.calibrate import PLOT_FORMATS, check_plot
    from harken.common.errors import UsageError
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        pass
    else:
        assert PLOT_FORMATS == set(FigureCanvasBase.get_supported_filetypes())
    for name in ("matplotlib", "matplotlib.backend_bases"):
        monkeypatch.setitem(sys.modules, name, None)          # as on the device: not installed
    with pytest.raises(UsageError, match=r"--plot x\.unknownext: matplotlib cannot write "
                       r"\.unknownext files; expected one of .*\.png"):
        check_plot("x.unknownext")
    for ok in ("fit.svg", "calibration.PNG", "plain", "", None):
        check_plot(ok)


def test_copies_are_left_out_and_an_unknown_plot_format_is_refused_first(ae_bundle, clips,
                                                                         tmp_path):
    """The same file 11 times gave a scipy FitDataError traceback; ``--plot x.unknownext``
    a ValueError traceback after the override was written. Both one line, exit 2, nothing
    written."""
    cfg = config(tmp_path, ae_bundle, interval_s=10)
    override = tmp_path / "state" / "threshold-fan.json"
    r = harken("calibrate", "--config", cfg, "--files", *[clips[0]] * 11, "--no-plot",
               "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len([line for line in lines if "left out" in line]) == 1
    assert "10 file(s) hold the same audio as one given before them" in r.stderr
    assert lines[-1].startswith("harken: error: calibration: only 1 scoreable intervals")
    assert not override.exists()

    r = harken("calibrate", "--config", cfg, "--files", *clips[:10], "--plot", "x.unknownext",
               "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        r.stderr.strip()] and "--plot x.unknownext: matplotlib cannot write .unknownext" \
        in r.stderr and ".png" in r.stderr
    assert not override.exists()

    # distinct files given with a copy: the copy is counted, the rest calibrated
    r = harken("calibrate", "--config", cfg, "--files", *clips[:10], clips[0], "--plot",
               "fit.svg", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["intervals"], out["duplicate_files"]) == (10, 1)
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "state" / "fit.svg").is_file()
    else:                         # a device install: the calibration stands, without a plot
        assert out["plot"].startswith("not drawn: matplotlib is not installed")
        assert not (tmp_path / "state" / "fit.svg").exists()
