"""The embedded default sink: one JSON line per report interval (the score payload of
docs/mqtt.md, docs/schemas/score.schema.json, plus health) and one per anomaly event, on
stdout and/or a file."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import TextIO


from harken.common.settings import PathText, Seconds

from harken.common.errors import ConfigError
from harken.agent.decision.records import IntervalResult, StatusEvent
from harken.agent.sinks.base import Sink, SinkSettings, register


# machines on different inputs write from their own threads to one stdout (or one file):
# a line is written whole under this lock, never interleaved with another's
_LINE_LOCK = threading.Lock()


class OutputSection(SinkSettings):
    """``[output]``: where the JSON lines go, and how often the health record comes."""
    stdout: bool = True
    file: PathText | None = None      # also append JSON lines here
    stats_s: Seconds(1, 3600) = 60.0  # health record every this many seconds


@register
class JsonLinesSink(Sink):
    name = "jsonlines"
    table = "output"
    Settings = OutputSection

    @classmethod
    def enabled(cls, config) -> bool:
        return True            # the embedded default: stdout and/or output.file

    @classmethod
    def from_config(cls, config) -> JsonLinesSink:
        out = config.output
        try:
            return cls(out.stdout, config.path(out.file) if out.file else None,
                       node=config.agent.node, machine=config.agent.machine)
        except OSError as exc:
            raise ConfigError(f"{config.source_file}: key 'output.file' = {out.file!r}: cannot "
                              f"open it for appending ({exc.strerror or exc})") from None

    def __init__(self, stdout: bool = True, file: Path | None = None,
                 stream: TextIO | None = None, node: str = "", machine: str = "") -> None:
        self.streams: list[TextIO] = []
        if stdout:
            self.streams.append(stream or sys.stdout)
        self._file = None
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(file, "a", buffering=1)        # line-buffered: nothing lost
            self.streams.append(self._file)
        self.node, self.machine = node, machine

    def _write(self, record: dict) -> None:
        line = json.dumps(record, allow_nan=False)
        with _LINE_LOCK:
            for s in self.streams:
                s.write(line + "\n")
                s.flush()

    def interval(self, result: IntervalResult) -> None:
        self._write({"kind": "score", "node": self.node, "machine": self.machine,
                     **result.payload()})
        if result.event is not None:
            self._write({"kind": "event", "node": self.node, "machine": self.machine,
                         "seq": result.seq, **result.event.to_dict()})

    def status(self, event: StatusEvent) -> None:
        """Every status event, as its record."""
        self._write({"kind": "status", "node": self.node, "machine": self.machine,
                     **event.to_dict()})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
