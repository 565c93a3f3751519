"""A source and a sink of one's own, in one module outside the package (docs/agent.md,
"Plugins"): a ``tone`` source that generates a sine (plus a little noise) and a ``csv``
sink that appends one row per report interval. Each is a class with its settings model;
the one registration line is the config's ``agent.plugins = ["tests.agent.plugins_example"]``,
which imports this module before the rest of the config is read.

    [agent]
    plugins = ["tests.agent.plugins_example"]
    [audio]
    source = "tone"
    frequency = 440
    [csv]
    enabled = true
    file = "scores.csv"
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from harken.agent.decision.records import IntervalResult
from harken.agent.sinks.base import Sink, SinkSettings
from harken.agent.sinks.base import register as register_sink
from harken.agent.sources.base import Report, Source, SourceSettings, Tap
from harken.agent.sources.base import register as register_source


class ToneSettings(SourceSettings):
    source: Literal["tone"] = "tone"
    frequency: float = Field(1000.0, gt=0, le=8000)
    level: float = Field(0.1, gt=0, le=0.5)
    seconds: float = Field(60.0, gt=0, le=3600)       # then the "recording" ends


@register_source
class ToneSource(Source):
    name = "tone"
    Settings = ToneSettings

    def __init__(self, settings: ToneSettings, rate: int, taps: Sequence[Tap]) -> None:
        self.s, self.rate, self.taps = settings, rate, list(taps)

    @classmethod
    def from_config(cls, config, rate: int, taps: Sequence[Tap] = (None,)) -> ToneSource:
        return cls(config.audio, rate, taps)

    def chunks(self, done: Callable[[], bool], report: Report) -> Iterator[np.ndarray | None]:
        rng = np.random.default_rng(0)
        block, total, start = max(1, int(self.s.block_s * self.rate)), \
            int(self.s.seconds * self.rate), 0
        while start < total and not done():
            t = np.arange(start, min(start + block, total)) / self.rate
            x = self.s.level * np.sin(2 * np.pi * self.s.frequency * t) \
                + 0.01 * rng.standard_normal(t.size)
            yield np.repeat(x.astype(np.float32)[:, None], len(self.taps), axis=1)
            start += t.size
        yield None                        # the end of the "recording"


class CsvSettings(SinkSettings):
    enabled: bool = False
    file: str = "scores.csv"          # relative to the config file
    delimiter: str = Field(",", min_length=1, max_length=1)


@register_sink
class CsvSink(Sink):
    name = "csv"
    table = "csv"
    Settings = CsvSettings

    @classmethod
    def enabled(cls, config) -> bool:
        return config.csv.enabled

    @classmethod
    def from_config(cls, config) -> CsvSink:
        return cls(config.path(config.csv.file), config.csv.delimiter, config.agent.machine)

    def __init__(self, path: Path, delimiter: str, machine: str) -> None:
        self.file = open(path, "a", newline="", buffering=1)
        self.writer = csv.writer(self.file, delimiter=delimiter)
        self.machine = machine

    def interval(self, result: IntervalResult) -> None:
        self.writer.writerow([self.machine, result.seq, result.score, result.status])

    def close(self) -> None:
        self.file.close()
