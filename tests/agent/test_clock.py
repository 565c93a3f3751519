"""Time you can trust (agent/clock.py): records stamped before the clock is synchronised
say so, and the step when it is set is reported once."""

import json

import numpy as np
import pytest

from harken.agent import clock as clockmod
from harken.agent.build import build
from harken.agent.clock import ClockWatch, kernel_clock_synced
from harken.agent.config import load_config
from harken.agent.runner import Listener, Machine, Runner
from harken.agent.sinks.jsonlines import JsonLinesSink
from harken.agent.sources import Source
from harken.common.errors import ConfigError
from harken.testkit.files import write_agent_config


class Boot:
    """A Pi after boot: the wall clock is 1970-ish and unsynchronised until ``sync_at``
    chunks have gone by, then NTP steps it forward by an hour."""

    def __init__(self, sync_at: int) -> None:
        self.chunks, self.sync_at, self.mono = 0, sync_at, 0.0

    def synced(self) -> bool:
        return self.chunks >= self.sync_at

    def wall(self) -> float:
        return 1000.0 + self.mono + (3600.0 if self.synced() else 0.0)

    def monotonic(self) -> float:
        return self.mono


class BootSource(Source):
    """1-s chunks of a quiet tone; each chunk advances the boot's clocks by a second."""
    name = "test-boot"

    def __init__(self, rate: int, boot: Boot, seconds: int = 8) -> None:
        t = np.arange(rate) / rate
        self.x = (0.05 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        self.boot, self.seconds = boot, seconds

    @classmethod
    def from_config(cls, config, rate, taps=(None,)):
        raise NotImplementedError

    def chunks(self, done, report):
        for _ in range(self.seconds):
            self.boot.mono += 1.0
            self.boot.chunks += 1
            yield self.x

    def close(self):
        pass


def test_records_before_sync_say_unsynced_and_the_step_at_sync_is_reported(ae_bundle,
                                                                           tmp_path):
    import io
    cfg = load_config(write_agent_config(
        tmp_path / "agent.toml", agent={"node": "n", "machine": "fan"},
        model={"bundle": ae_bundle, "artifact": "onnx-int8"},
        decision={"interval_s": 2.0, "threshold": 1e9}, output={"stdout": False}))
    bundle, pipeline = build(cfg)
    boot = Boot(sync_at=5)
    pipeline.clock = boot.wall
    out = io.StringIO()
    sink = JsonLinesSink(stream=out, node="n", machine="fan")
    watch = ClockWatch(boot.synced, wall=boot.wall, mono=boot.monotonic)
    runner = Runner(cfg, [Listener(BootSource(bundle.spec.sample_rate, boot),
                                   [Machine(cfg, bundle, pipeline, [sink])])], clock=watch)
    assert runner.run() == 0
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    scores = [r for r in records if r["kind"] == "score"]
    assert [r.get("clock") for r in scores] == ["unsynced", "unsynced", None, None]
    # an interval ends with the frame centred on its last hop (docs/agent.md "Report
    # intervals"): with 1-s chunks, the ones ending at 2 and 6 s wait for the next chunk
    assert [r["ts"] for r in scores] == [1003.0, 1004.0, 4607.0, 4608.0]
    steps = [r for r in records if r.get("status") == "clock_set"]
    assert steps == [{"kind": "status", "node": "n", "machine": "fan", "status": "clock_set",
                      "jump_s": 3600.0, "clock": "synced"}]
    # said between the last unsynced record and the first right one
    assert records.index(scores[1]) < records.index(steps[0]) < records.index(scores[2])


def test_the_kernel_tells_whether_the_clock_is_synchronised():
    """adjtimex(2) answers on Linux without privileges (True or False, never None here)."""
    assert kernel_clock_synced() in (True, False)


def test_a_denied_adjtimex_falls_back_to_timesyncd_s_flag_then_to_unknown(monkeypatch, tmp_path):
    monkeypatch.setattr(clockmod, "_adjtimex", lambda: None)     # ProtectClock=yes: EPERM
    monkeypatch.setattr(clockmod, "TIMESYNCD_FLAG", tmp_path / "synchronized")
    assert kernel_clock_synced() is None
    assert ClockWatch(kernel_clock_synced).state == "unknown"
    (tmp_path / "synchronized").touch()
    assert kernel_clock_synced() is True


def test_harken_clock_overrides_the_kernel_and_a_wrong_value_is_one_line(monkeypatch):
    monkeypatch.setenv("HARKEN_CLOCK", "synced")
    assert clockmod.from_environment()() is True
    monkeypatch.setenv("HARKEN_CLOCK", "sometimes")
    with pytest.raises(ConfigError, match="HARKEN_CLOCK='sometimes': expected 'kernel'"):
        clockmod.from_environment()
