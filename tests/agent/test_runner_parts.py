"""The runner is handed its parts (agent/runner.py): any Source and Sink plug in, and each
registered kind is found by its config name."""

import numpy as np

from harken.agent.config import load_config
from harken.agent.build import build
from harken.agent.runner import Listener, Machine, Runner
from harken.agent.sinks import SINKS, Sink
from harken.agent.sources import SOURCES, Source
from harken.testkit.files import write_agent_config


class ToneSource(Source):
    """Two recordings of a quiet 440 Hz tone, in 0.25 s chunks, with a gap in between."""
    name = "test-tone"

    def __init__(self, rate: int, seconds: float) -> None:
        t = np.arange(int(rate * seconds)) / rate
        self.x = (0.05 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        self.step, self.closed = rate // 4, False

    @classmethod
    def from_config(cls, config, rate, taps=(None,)):
        return cls(rate, 5.0)

    def chunks(self, done, report):
        for _ in range(2):
            for i in range(0, len(self.x), self.step):
                yield self.x[i:i + self.step]
            yield np.zeros(0, np.float32)           # nothing arrived in time
            report({"status": "audio_lost", "error": "unplugged"})
            yield None                              # end of this recording

    def health(self):
        return {"tone_chunks": len(self.x) // self.step}

    def close(self):
        self.closed = True


class MemorySink(Sink):
    name = "test-memory"

    def __init__(self):
        self.results, self.records, self.closed = [], [], False

    @classmethod
    def enabled(cls, config):
        return False

    @classmethod
    def from_config(cls, config):
        return cls()

    def interval(self, result):
        self.results.append(result)

    def status(self, record):
        self.records.append(record)

    @property
    def seq_start(self):
        return 41

    def close(self):
        self.closed = True


def test_a_runner_takes_any_source_and_sink(ae_bundle, tmp_path):
    cfg = load_config(write_agent_config(
        tmp_path / "agent.toml", agent={"node": "n", "machine": "fan"},
        model={"bundle": ae_bundle, "artifact": "onnx-int8"},
        decision={"interval_s": 2.0, "threshold": 1e9}, output={"stdout": False, "stats_s": 1}))
    bundle, pipeline = build(cfg)
    sink = MemorySink()
    pipeline.seq = sink.seq_start
    source = ToneSource(bundle.spec.sample_rate, 5.0)
    assert Runner(cfg, [Listener(source, [Machine(cfg, bundle, pipeline, [sink])])]).run() == 0
    # 5 s in 2-s intervals: two whole intervals per recording; the end of each recording
    # drops its last second (10 s as one stream would have made five)
    assert [r.seq for r in sink.results] == list(range(41, 45))
    assert source.closed and sink.closed
    kinds = [r.status for r in sink.records]               # typed status events
    assert kinds[0] == "started" and kinds[-1] == "stopped" and kinds.count("audio_lost") == 2


def test_every_configurable_source_and_sink_is_registered():
    assert {"mic", "file", "stdin"} <= set(SOURCES)
    assert list(SINKS)[:2] == ["jsonlines", "mqtt"]
