"""Time to detect, for bench/bench_agent.py: normal-then-faulty recordings stitched from a
corpus's labelled test clips (as `harken-train recording` and the quick start make them),
and the time from a fault's onset to the agent's anomaly event read from its JSON lines.

The recordings are played through `harken run` as fast as it can (a file source with
`audio.realtime = false`): the decision only sees report intervals, so the delay in audio
seconds is the same as at real time; at real time the agent's processing of the interval
that raises the event comes on top (milliseconds: the real-time part of bench_agent
measures it as the publish latency). docs/benchmarks.md "Time to detect"."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Recording:
    """One stitched recording: ``lead_s`` seconds of a normal clip's tail, then the
    normal clips, then the faulty ones (one fault kind), cut to whole report intervals."""
    machine: str
    section: int
    domain: str
    fault: str
    normal: tuple[Path, ...]
    faulty: tuple[Path, ...]
    lead: Path
    lead_s: float


def time_to_detect(records: list[dict], onset_s: float, interval_s: float) -> dict:
    """The agent's JSON lines of one recording played from its start, read against the
    fault's onset (seconds into the audio). The i-th score record (0-based) covers audio up
    to ``(i + 1) * interval_s``; an anomaly ``start`` event belongs to the score record of
    its ``seq``. Outcome: ``detected`` (the first start event of an interval ending after
    the onset; ``seconds`` from the onset to that interval's end), ``missed`` (none), or
    ``on_at_onset`` (the alarm was already on when the fault began, so the recording
    cannot time a detection). ``false_alarms`` counts start events wholly before the onset."""
    ends = {}
    on_at_onset = False
    for i, r in enumerate(x for x in records if x.get("kind") == "score"):
        end = (i + 1) * interval_s
        ends[r["seq"]] = end
        if end <= onset_s + 1e-9:
            on_at_onset = bool(r["anomaly"])
    starts = sorted(ends[e["seq"]] for e in records
                    if e.get("kind") == "event" and e.get("type") == "start")
    before = [t for t in starts if t <= onset_s + 1e-9]
    after = [t for t in starts if t > onset_s + 1e-9]
    if on_at_onset:
        outcome, seconds = "on_at_onset", None
    elif after:
        outcome, seconds = "detected", after[0] - onset_s
    else:
        outcome, seconds = "missed", None
    return {"outcome": outcome, "seconds": seconds, "false_alarms": len(before)}


def summarise(rows: list[dict]) -> dict:
    """Median and largest time to detect over the detected recordings, and the count of
    each outcome (a missed fault is not hidden in the median)."""
    secs = [r["seconds"] for r in rows if r["outcome"] == "detected"]
    return {"recordings": len(rows),
            **{k: sum(r["outcome"] == k for r in rows)
               for k in ("detected", "missed", "on_at_onset")},
            "false_alarms": sum(r["false_alarms"] for r in rows),
            "median_s": float(np.median(secs)) if secs else None,
            "max_s": float(max(secs)) if secs else None}


def fault_kinds(corpus: Path) -> dict[str, str]:
    """Test clip file name -> fault kind, from the synthetic corpus's corpus.json (empty for
    a corpus without one: every anomalous clip then counts as one kind, ``anomaly``)."""
    index = corpus / "corpus.json"
    if not index.is_file():
        return {}
    clips = json.loads(index.read_text()).get("clips", [])
    return {Path(c["file"]).name: c["fault"] for c in clips if c.get("fault")}


def recordings(corpus: Path, machine: str, sections: list[int], interval_s: float,
               normal: int = 6, faulty: int = 6) -> list[Recording]:
    """One recording per section, domain and fault kind of ``machine``'s test clips. The
    onset's place inside a report interval cycles through 0, 1/4, 1/2 and 3/4 of it (a
    fault starts at any moment, not on an interval's edge); the normal clips rotate so
    that recordings share as few as possible."""
    from harken.training.data.corpus import scan
    kinds = fault_kinds(corpus)
    clips = scan(corpus, [machine], split="test")
    out: list[Recording] = []
    for section in sections:
        for domain in ("source", "target"):
            here = [c for c in clips if c.section == section and c.domain == domain]
            normals = [c.path for c in here if c.label == "normal"]
            anomalies = [c for c in here if c.label == "anomaly"]
            by_kind: dict[str, list[Path]] = {}
            for c in anomalies:
                by_kind.setdefault(kinds.get(c.name, "anomaly"), []).append(c.path)
            if len(normals) <= normal:
                continue
            for kind, paths in sorted(by_kind.items()):
                j = len(out)
                pick = [normals[(j * (normal + 1) + i) % len(normals)] for i in range(normal + 1)]
                out.append(Recording(machine, section, domain, kind, tuple(pick[1:]),
                                     tuple(paths[i % len(paths)] for i in range(faulty)),
                                     pick[0], (j % 4) * interval_s / 4))
    return out


def stitch(rec: Recording, out: Path, interval_s: float, rate: int = 16000) -> dict:
    """Writes the recording to ``out``; its onset and the seconds of fault it holds."""
    from harken.agent.sources.wavio import read_wav, write_wav
    lead = read_wav(rec.lead, rate)[0]
    lead = lead[len(lead) - int(round(rec.lead_s * rate)):] if rec.lead_s else lead[:0]
    normal = [read_wav(p, rate)[0] for p in rec.normal]
    faulty = [read_wav(p, rate)[0] for p in rec.faulty]
    audio = np.concatenate([lead, *normal, *faulty])
    whole = int(len(audio) // int(interval_s * rate)) * int(interval_s * rate)
    onset = (len(lead) + sum(len(x) for x in normal)) / rate
    write_wav(out, audio[:whole], rate)
    return {"onset_s": onset, "fault_s": whole / rate - onset}
