"""Status events are types (agent/decision/records.py), and each writes the record the JSON
lines and the MQTT stats topic carry, key for key and in the same order."""

import dataclasses
import io
import json

import pytest

from harken.agent.decision.records import (AudioFailed, AudioHealth, AudioLost, AudioRestored,
                                           EnrolledBankInfo, SourceNote, Started, Stats,
                                           Stopped, source_report)
from harken.agent.sinks.jsonlines import JsonLinesSink


def test_each_event_writes_its_record_in_order():
    bank = EnrolledBankInfo(audio_s=600.0, intervals=60, created="2026-01-02T03:04:05Z")
    cases = [
        (Started("ae-1", "onnxruntime", 0.5, "mic", 2, bank),
         {"status": "started", "model": "ae-1", "backend": "onnxruntime", "threshold": 0.5,
          "source": "mic", "channel": 2,
          "bank": {"enrolled": True, "audio_s": 600.0, "intervals": 60,
                   "created": "2026-01-02T03:04:05Z"}}),
        (Started("ae-1", "onnxruntime", 0.5, "file", None),
         {"status": "started", "model": "ae-1", "backend": "onnxruntime", "threshold": 0.5,
          "source": "file", "channel": None}),
        (Stats(ts=1.5, process={"cpu_percent": 3.0, "rss_mb": 80.0}, intervals=4,
               inference_ms_median=None, audio="ok", interval_status={"ok": 4},
               source={"xruns": 0}, sinks={"outbox_depth": 0, "mqtt_connected": True}),
         {"status": "stats", "ts": 1.5, "cpu_percent": 3.0, "rss_mb": 80.0, "intervals": 4,
          "inference_ms_median": None, "audio": "ok", "interval_status": {"ok": 4},
          "xruns": 0, "outbox_depth": 0, "mqtt_connected": True}),
        (AudioHealth("silent", "ok", 1),
         {"status": "audio_health", "health": "silent", "was": "ok", "channel": 1}),
        (AudioLost("unplugged", None), {"status": "audio_lost", "error": "unplugged",
                                        "channel": None}),
        (AudioRestored("hw:1", None), {"status": "audio_restored", "device": "hw:1",
                                       "channel": None}),
        (AudioFailed("gone", 3), {"status": "audio_failed", "error": "gone", "channel": 3}),
        (Stopped(7), {"status": "stopped", "intervals": 7}),
    ]
    for event, record in cases:
        assert list(event.to_dict().items()) == list(record.items())
        with pytest.raises(dataclasses.FrozenInstanceError):
            event.channel = 0


def test_a_sources_report_becomes_its_type_or_is_kept_as_written():
    assert source_report({"status": "audio_lost", "error": "e"}, 1) == AudioLost("e", 1)
    assert source_report({"status": "audio_restored", "device": "d"}, 1) == \
        AudioRestored("d", 1)
    odd = source_report({"status": "audio_lost", "error": "e", "retry_s": 5}, 1)
    assert isinstance(odd, SourceNote) and not isinstance(odd, AudioLost)
    assert list(odd.to_dict().items()) == [("status", "audio_lost"), ("error", "e"),
                                          ("retry_s", 5), ("channel", 1)]
    assert not isinstance(AudioFailed("x", 1), AudioLost)     # siblings, told apart by type


def test_the_json_lines_sink_writes_every_event_as_its_record():
    out = io.StringIO()
    sink = JsonLinesSink(stream=out, node="n1", machine="fan")
    sink.status(AudioHealth("clipped", "ok", None))
    sink.status(Stopped(2))
    assert out.getvalue().splitlines() == [
        '{"kind": "status", "node": "n1", "machine": "fan", "status": "audio_health", '
        '"health": "clipped", "was": "ok", "channel": null}',
        '{"kind": "status", "node": "n1", "machine": "fan", "status": "stopped", '
        '"intervals": 2}']
    assert all(json.loads(line) for line in out.getvalue().splitlines())
