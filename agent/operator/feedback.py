"""False-alarm feedback: an operator marks an alarm (or a time range) normal, its intervals
join the machine's reference bank, and the threshold is kept; undo takes the last
feedback back; recalibrate fits a new threshold from the intervals the store holds
(docs/agent.md "Feedback: how the bank and threshold change").

Everything works on the files in the machine's ``agent.state_dir``: the feedback store
(agent/sinks/recent.py) the intervals come from, the overlay (agent/model/overlay.py) they
go to, the calibration override recalibrate writes, the audit log. The CALLER holds the
state lock (the daemon all its life; the CLI without a daemon takes it). A running daemon
picks the change up with ``pipeline.swap(*live_state(config, bundle))``.

Feedback KEEPS the threshold: the machine's own bank rows keep their densities and the
fusion scales stay, so an added row can only lower scores, and only near the sound fed back
(agent/model/rules/density.py ``joined_densities``); for every sound not fed back the
threshold keeps its meaning. A refit of the threshold on held-out scores let near-copies of
the bank move it (7.75 -> 138.7: the machine deaf); ``recalibrate`` refits it from the
scores of operation, with its guards.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time

import numpy as np

from harken.agent.build import (base_threshold, feedback_file,
                                machine_rule, read_feedback, resolve_threshold, with_feedback)
from harken.agent.config import Config
from harken.agent.decision.override import CalibrationOverride, write_override
from harken.agent.decision.thresholds import (check_false_alarm_rate, exceedance,
                                              false_alarm_threshold, outliers)
from harken.agent.model.bank import MAX_BANK_INTERVALS
from harken.agent.model.bundle import Bundle, open_bundle
from harken.agent.model.overlay import Base, Change, Overlay, write_overlay
from harken.agent.model.rules import ScoreRule
from harken.agent.model.rules.base import BankRule
from harken.agent.model.rules.density import distances
from harken.agent.model.rules.spectral_knn import SpectralKnnRule
from harken.agent.operator import audit
from harken.agent.sinks.recent import (ANOMALY, END, FIRST, MAINTENANCE, START, STATS,
                                       Stored, StoreError, read_store, store_folder)
from harken.common.errors import ConfigError, UsageError
from harken.common.records import GammaParams

log = logging.getLogger(__name__)
# recalibrate: fewer false alarms a week than this asks the gamma for a tail no day of
# scores can show (1e-300 gave a threshold of 490 against scores of at most 25: deaf)
MIN_FALSE_ALARMS_PER_WEEK = 0.01
# recalibrate: a threshold more than this many times the highest score stored is refused
FAR_ABOVE = 4.0
# recalibrate: the fewest usable intervals it fits on: the tail asked of the gamma is
# extrapolated far past the scores, and 10 intervals (20 s) put a threshold at 25.7 where
# no anomaly reached it (docs/reliability.md)
MIN_INTERVALS = 60
# recalibrate: a threshold that the outlier check says moves by more than this factor
# without its outliers is refused (one unmarked interval among held-out scores: 77 vs 9)
OUTLIER_FACTOR = 2.0
# a new row this close to a bank row (in standardised units, per value) is a copy of it
COPY_DISTANCE = 1e-6
# an event's intervals stop at a stall longer than this many intervals (or seconds, if
# more): audio was lost there, so what follows is not the sound the alarm was about
GAP_INTERVALS, GAP_S = 10, 60.0


class FeedbackError(UsageError):
    """Feedback, undo or recalibrate refused: the one-line reason."""


# -- the machine's parts ----------------------------------------------------------------

class _Machine:
    """One machine's bundle, rule (before feedback), enrolled bank manifest, overlay."""

    def __init__(self, config: Config, bundle: Bundle | None = None) -> None:
        self.config = config
        self.bundle = bundle or open_bundle(config.path(config.model.bundle))
        self.rule, self.enrollment = machine_rule(config, self.bundle)
        self.overlay = read_feedback(config, self.bundle)
        self.state_dir = config.path(config.agent.state_dir)

    def bank_rule(self) -> BankRule:
        if not isinstance(self.rule, BankRule):
            name = "fused members" if self.bundle.is_fused else self.bundle.rule_name
            raise FeedbackError(f"feedback is not possible for this bundle "
                                f"({self.bundle.model_id}: rule {name} scores without a "
                                f"reference bank)")
        return self.rule

    def live(self, overlay: Overlay | None) -> ScoreRule | None:
        rule = with_feedback(self.config, self.bundle, self.rule, overlay) \
            if overlay is not None and overlay.changes else self.rule
        if isinstance(rule, SpectralKnnRule) and not hasattr(rule, "n_features"):
            rule.n_features = self.bundle.spec.n_features    # what check_model learns
        return rule

    def threshold(self, overlay: Overlay | None) -> float:
        return resolve_threshold(self.config, self.bundle, self.enrollment, True,
                                 overlay if overlay is not None and overlay.changes else None,
                                 warn=False)[0]

    def base(self) -> Base:
        if self.config.decision.threshold is not None:
            return Base(kind="config", value=float(self.config.decision.threshold))
        value, kind, _ = base_threshold(self.config, self.bundle, self.enrollment)
        return Base(kind=kind, value=float(value))

    def stored(self) -> Stored:
        c = self.config
        if c.feedback.keep_hours == 0:
            raise FeedbackError(f"{c.source_file}: the feedback store is off ([feedback] "
                                f"keep_hours = 0): no intervals are kept to give feedback on "
                                f"or to recalibrate from; set keep_hours (default 24)")
        try:
            stored = read_store(store_folder(self.state_dir, c.agent.machine),
                                self.bundle.model_id, c.decision.interval_s)
        except StoreError as exc:
            raise FeedbackError(str(exc)) from None
        self.store_warning = stored.warning()
        if self.store_warning:           # said, not hidden: their intervals are missing
            log.warning(f"WARNING: machine {c.agent.machine}: {self.store_warning}")
        return stored

    def warned(self) -> dict:
        """The store's warning for a command's result (``stored``), if it said one."""
        w = getattr(self, "store_warning", None)
        return {"store_warning": w} if w else {}


def live_state(config: Config, bundle: Bundle) -> tuple[ScoreRule | None, float]:
    """The rule (bank + overlay; None for a rule without a bank) and the threshold a running
    pipeline must now use: the daemon calls ``pipeline.swap(*live_state(...))`` after
    mark_normal, undo and recalibrate."""
    m = _Machine(config, bundle)
    rule = m.live(m.overlay)
    return (rule if isinstance(rule, BankRule) else None), m.threshold(m.overlay)


# -- which stored intervals -------------------------------------------------------------

def recent_events(config: Config) -> list[dict]:
    """The anomaly events the feedback store holds, oldest first: what ``harken feedback
    --event SEQ`` can name (an operator reads the seq here, on the event topic, or in
    ``harken evidence --list``). Each says when it started and ended, and how (``ended_by``:
    its end event, maintenance, a restart, the next event; None: still on when the store
    last heard), its peak score, and whether feedback was given on it already.
    Read only: a running daemon writes the store meanwhile."""
    m = _Machine(config)
    stored = m.stored()
    given = _given(stored, m.overlay)
    out = []
    for i in np.nonzero(stored.has(START))[0]:
        seq = int(stored.seq[i])
        _, hi = _event_span(stored, int(i), config)
        ended_by = _ended_by(stored, hi, config)
        scores = stored.score[i:hi + 1]
        scores = scores[np.isfinite(scores)]
        out.append({"machine": config.agent.machine, "event": seq,
                    "start": _iso(stored.ts[i]),
                    "end": _iso(stored.ts[hi]) if ended_by else None,
                    "ended_by": ended_by,
                    "peak_score": float(scores.max()) if scores.size else None,
                    "threshold": float(stored.threshold[i]),
                    "fed_back": bool(given[i])})
    return out


def _ended_by(stored: Stored, hi: int, config: Config) -> str | None:
    """How the event whose last interval is ``hi`` (``_event_span``) ended: its end event,
    maintenance (which ends a running event), a break in the run (a stop, a kill, a
    restart: the agent never said the end), the next event; None while it still runs as
    far as the store has heard."""
    if stored.has(END)[hi]:
        return "end event"
    if hi + 1 >= len(stored):
        return None
    if stored.has(MAINTENANCE)[hi + 1]:
        return "maintenance"
    if not _joined(stored, hi + 1, config):
        return "restart"
    return "next event"


def _given(stored: Stored, overlay: Overlay | None) -> np.ndarray:
    """Which stored intervals are in the overlay: an interval is its (seq, ts), since seqs
    start again at 1 where their files were lost (agent/seqstore.py)."""
    if overlay is None or not len(overlay):
        return np.zeros(len(stored), bool)
    have = set(zip(overlay.seq.tolist(), overlay.ts.tolist()))
    return np.array([k in have for k in zip(stored.seq.tolist(), stored.ts.tolist())], bool)


def _joined(stored: Stored, j: int, config: Config) -> bool:
    """Whether interval ``j`` follows interval ``j - 1`` in one run with nothing between:
    not the first a run stored, the next seq, a later time and no more than a stall away
    (an event left open by a stop, a kill or maintenance must not run on into another)."""
    step = stored.ts[j] - stored.ts[j - 1]
    return (not stored.has(FIRST)[j] and stored.seq[j] == stored.seq[j - 1] + 1
            and 0 <= step <= max(GAP_INTERVALS * config.decision.interval_s, GAP_S))


def _event_span(stored: Stored, i: int, config: Config) -> tuple[int, int]:
    """(first, last) indices into ``stored`` of the event that starts at index ``i``: from
    the ``decision.n - 1`` intervals before it (those that raised it) through its end event,
    or to the interval before the next start, before an interval in maintenance, or before
    a break in the run (``_joined``: a restart, a lost stretch), whichever comes first."""
    lo = i
    while lo > 0 and i - lo < config.decision.n - 1 and _joined(stored, lo, config) \
            and not stored.has(MAINTENANCE)[lo - 1]:
        lo -= 1
    hi = i
    while not stored.has(END)[hi] and hi + 1 < len(stored) and _joined(stored, hi + 1, config) \
            and not stored.has(START | MAINTENANCE)[hi + 1]:
        hi += 1
    return lo, hi


def _chosen(stored: Stored, config: Config, event: int | None, start: float | None,
            end: float | None) -> np.ndarray:
    """Indices into ``stored`` of the intervals an event or a time range names (scored,
    with statistics); refused, saying why, when there are none."""
    machine, keep = config.agent.machine, config.feedback.keep_hours
    held = (f"the store of machine {machine} keeps {keep:g} h" +
            (f"; it holds seqs {int(stored.seq[0])}..{int(stored.seq[-1])}" if len(stored)
             else "; it holds no intervals of this bundle and interval length")
            + (f"; {stored.warning()}" if stored.unreadable else ""))
    if event is not None:
        where = np.nonzero(stored.seq == event)[0]
        if not where.size:
            raise FeedbackError(f"no interval {event} in the feedback store (older than "
                                f"keep_hours, or never scored: {held})")
        starts_here = where[stored.has(START)[where]]
        if not starts_here.size:
            starts = stored.seq[stored.has(START)][-5:].tolist()
            raise FeedbackError(f"interval {event} did not start an anomaly event (no such "
                                f"event; the last events stored start at seqs {starts})")
        # seqs that started again (their files lost) may name two events: the newest
        lo, hi = _event_span(stored, int(starts_here[-1]), config)
        sel = np.zeros(len(stored), bool)
        sel[lo:hi + 1] = True
        what = f"event {event}"
    else:
        # an interval in maintenance (a fitter's hammering) is never normal sound, as an
        # event's span and recalibrate leave it out
        sel = (stored.ts >= start) & (stored.ts <= end) & ~stored.has(MAINTENANCE)
        what = f"the range {_iso(start)} to {_iso(end)}"
        if not sel.any():
            raise FeedbackError(f"no interval stored in {what} out of maintenance ({held}"
                                + (f", from {_iso(stored.ts[0])} to {_iso(stored.ts[-1])})"
                                   if len(stored) else ")"))
    usable = sel & stored.has(STATS) & np.isfinite(stored.score)
    if not usable.any():
        raise FeedbackError(f"none of the {int(sel.sum())} interval(s) of {what} was scored "
                            f"with its statistics kept (silent, clipped or invalid audio); "
                            f"nothing to add")
    return np.nonzero(usable)[0]


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(float(ts), dt.timezone.utc).isoformat(timespec="seconds")


def _rows(stored: Stored, idx: np.ndarray) -> dict[str, np.ndarray]:
    names = list(stored.statistics[idx[0]])
    return {k: np.stack([stored.statistics[i][k] for i in idx]).astype(np.float32)
            for k in names}


def _not_copies(rows: dict[str, np.ndarray], overlay: Overlay | None, rule: BankRule
                ) -> np.ndarray:
    """Which new rows are not exact copies of each other, of an overlay row, or of a bank
    row (an interval with a copy scores 0 held out and its density collapses: normal sound
    near it would score huge, as enrollment guards: agent/model/bank.py)."""
    names = sorted(rows)
    seen = set()
    if overlay is not None:
        seen = {b"".join(overlay.rows[k][i].tobytes() for k in names) for i in range(len(overlay))}
    keep = np.ones(len(rows[names[0]]), bool)
    for i in range(len(keep)):
        key = b"".join(rows[k][i].tobytes() for k in names)
        keep[i] = key not in seen
        seen.add(key)
    near = np.ones(len(keep), bool)
    for z, bank in _standardised(rows, rule):   # near-copies of the bank's own rows
        d = distances(z, bank, "euclidean").min(axis=1)
        near &= d <= COPY_DISTANCE * math.sqrt(z.shape[1])
    return keep & ~near


def _standardised(rows: dict[str, np.ndarray], rule: BankRule
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per bank of ``rule``: (the new rows as the bank holds them, the bank's own rows).
    The rule itself standardises them (``with_references``: each rule has its own units,
    spectral-knn per branch, embedding-density unit vectors, latent-ldn codes in
    code_mean/code_std units), so the copy guard assumes no rule's array names; a bank is
    a 2-D array that grew by the new rows."""
    joined = rule.with_references(rows, 1)
    m = len(next(iter(rows.values())))
    pairs = []
    for name, own in rule.arrays.items():
        new = np.asarray(joined.arrays.get(name))
        if np.ndim(own) == 2 and new.ndim == 2 and len(new) == len(own) + m:
            new = new.astype(np.float64)
            pairs.append((new[len(own):], new[:len(own)]))
    if not pairs:
        raise FeedbackError(f"score rule {rule.name!r}: its reference bank did not take the "
                            f"intervals in; feedback is not possible with this bundle")
    return pairs


# -- the operations ---------------------------------------------------------------------

def _check_who(operator: object, via: object, command_id: object) -> None:
    """The operator, the way and the command id as the overlay and audit log keep them."""
    if not (isinstance(operator, str) and 1 <= len(operator) <= 200 and operator.isprintable()):
        raise FeedbackError(f"operator {str(operator)[:60]!r}: expected a name of 1 to 200 "
                            f"printable characters")
    if not (isinstance(via, str) and 1 <= len(via) <= 32):
        raise FeedbackError(f"via {str(via)[:60]!r}: expected 1 to 32 characters")
    if command_id is not None and not (isinstance(command_id, str)
                                       and 1 <= len(command_id) <= 128):
        raise FeedbackError(f"command id {str(command_id)[:60]!r}: expected 1 to 128 "
                            f"characters")


def mark_normal(config: Config, *, event: int | None = None, start: float | None = None,
                end: float | None = None, operator: str, via: str,
                command_id: str | None = None) -> dict:
    """Add the intervals of anomaly event ``event`` (its start seq), or of the time range
    [``start``, ``end``] (UTC epoch seconds), to the machine's bank; the threshold is
    kept (module docstring); one audit line. Returns what was done."""
    _check_who(operator, via, command_id)
    if (event is None) == (start is None and end is None) or (start is None) != (end is None):
        raise FeedbackError("feedback: give an event (its start seq) or a time range (from "
                            "and to), one of the two")
    if event is not None and (isinstance(event, bool) or not isinstance(event, (int, np.integer))):
        raise FeedbackError(f"feedback: event {str(event)[:60]!r}: expected the seq (a whole "
                            f"number) of the interval that started it")
    if start is not None and not all(isinstance(t, (int, float)) and not isinstance(t, bool)
                                     for t in (start, end)):
        raise FeedbackError(f"feedback: from {str(start)[:40]!r} to {str(end)[:40]!r}: expected "
                            f"UTC epoch seconds")
    if start is not None and not (math.isfinite(start) and math.isfinite(end) and start <= end):
        raise FeedbackError(f"feedback: the range from {start} to {end} is not a time range "
                            f"(from must not be after to)")
    m = _Machine(config)
    rule = m.bank_rule()
    stored = m.stored()
    idx = _chosen(stored, config, event, start, end)
    rows = _rows(stored, idx)
    try:
        rule.check_rows(rows)
    except ValueError as exc:
        raise FeedbackError(f"the stored intervals do not fit this bank ({exc})") from None
    seqs, ts = stored.seq[idx], stored.ts[idx]
    given = _given(stored, m.overlay)[idx]
    fresh = ~given & _not_copies(rows, m.overlay, rule)
    if not fresh.any():
        raise FeedbackError(f"all {len(seqs)} interval(s) are in the bank already (feedback "
                            f"given on them before, or copies of its rows); nothing changed")
    rows = {k: v[fresh] for k, v in rows.items()}
    seqs, ts = seqs[fresh], ts[fresh]
    have = len(m.overlay) if m.overlay is not None else 0
    if rule.bank_rows + have + len(seqs) > MAX_BANK_INTERVALS:
        raise FeedbackError(f"{len(seqs)} more interval(s) would make a bank of "
                            f"{rule.bank_rows + have + len(seqs)}, more than a bank holds "
                            f"({MAX_BANK_INTERVALS}); give fewer intervals (a shorter "
                            f"range), or take feedback back with --undo (newest first)")
    old = m.overlay if m.overlay is not None else Overlay.empty(list(rows), [
        v.shape[1] for v in rows.values()])
    before = m.threshold(m.overlay)
    change_id = (old.last.id + 1) if old.last is not None else 1
    draft = old.added(rows, seqs, ts, Change(
        id=change_id, at=audit.now_iso(), operator=operator, via=via, command_id=command_id,
        seqs=[int(s) for s in seqs], threshold_before=before, threshold_after=before,
        base=m.base()))
    # the threshold is KEPT (docs/agent.md "Feedback: how the bank and threshold change"):
    # the machine's own rows keep their densities and the fusion scales stay, so the rows
    # fed back can only lower scores, and only near the sounds fed back; for every other
    # sound the threshold keeps its meaning. A held-out refit let near-copies of the bank
    # move it (7.75 -> 138.7 on the enrollment clips plus a hum: the machine deaf);
    # 'recalibrate-threshold' refits it from operation
    after = before
    note = (f"{config.source_file}: decision.threshold = {before:g} is set, so the threshold "
            f"stays; the bank changed" if config.decision.threshold is not None else None)
    change = draft.changes[-1].model_copy(update={"threshold_after": after})
    overlay = Overlay(draft.rows, draft.seq, draft.ts, draft.change, [*old.changes, change])
    audit.check_writable(m.state_dir)          # no change whose audit line cannot be written
    write_overlay(feedback_file(config), overlay, m.bundle.model_id, config.agent.machine,
                  config.agent.section)
    rows_before = rule.bank_rows + len(old)
    details = {"intervals": [int(s) for s in seqs], "threshold_before": before,
               "threshold_after": after, "rows_before": rows_before,
               "rows_after": rows_before + len(seqs), "change": change_id,
               **({"event": int(event)} if event is not None else {"from": start, "to": end})}
    line = _audit(m.state_dir, {"machine": config.agent.machine, "action": "feedback",
                                "outcome": "ok", "operator": operator, "via": via,
                                "command_id": command_id, **details})
    skipped = int(len(idx) - len(seqs))
    return {"machine": config.agent.machine, "action": "feedback", "at": line["at"],
            **details, "skipped_intervals": skipped, **({"note": note} if note else {}),
            **m.warned(), **_warning(line)}


def undo(config: Config, *, operator: str, via: str, command_id: str | None = None) -> dict:
    """Take the last feedback back: its rows leave the bank and the threshold is what it
    was before it (bit for bit); one audit line."""
    _check_who(operator, via, command_id)
    m = _Machine(config)
    if m.overlay is None or not m.overlay.changes:
        raise FeedbackError(f"no feedback to undo for machine {config.agent.machine} (no "
                            f"{feedback_file(config).name})")
    last = m.overlay.last
    before = m.threshold(m.overlay)
    rest = m.overlay.without_last()
    after, origin = resolve_threshold(config, m.bundle, m.enrollment, True,
                                      rest if rest.changes else None, warn=False)
    bank = m.rule.bank_rows if isinstance(m.rule, BankRule) else 0
    audit.check_writable(m.state_dir)          # no change whose audit line cannot be written
    write_overlay(feedback_file(config), rest, m.bundle.model_id, config.agent.machine,
                  config.agent.section)
    details = {"intervals": list(last.seqs), "threshold_before": before,
               "threshold_after": after, "rows_before": bank + len(m.overlay),
               "rows_after": bank + len(rest), "change": last.id}
    note = None
    if after != last.threshold_before:
        # a recalibration (or enrollment) since this feedback is the base now: its
        # threshold stays, though it was fitted with this feedback's intervals in the bank
        note = (f"the threshold is {after:.6g} ({origin}), not the {last.threshold_before:.6g} "
                f"it was before this feedback: it was set since (recalibrated, enrolled, or "
                f"configured), with these intervals in the bank; recalibrate again to fit it "
                f"without them")
    line = _audit(m.state_dir, {"machine": config.agent.machine, "action": "undo",
                                "outcome": "ok", "operator": operator, "via": via,
                                "command_id": command_id, **details,
                                **({"note": note} if note else {})})
    return {"machine": config.agent.machine, "action": "undo", "at": line["at"], **details,
            **({"note": note} if note else {}), **_warning(line)}


def recalibrate(config: Config, *, hours: float = 24.0, false_alarms_per_week: float = 1.0,
                operator: str, via: str, command_id: str | None = None) -> dict:
    """A calibration override (agent/decision/override.py) fitted, as ``harken calibrate``
    fits it, on the scores of the intervals stored in the last ``hours``: rescored through
    the current rule (bank + feedback) where their statistics are kept; intervals in
    maintenance, unscored, anomalous, or marked normal (in the bank: their held-out scores
    are not live scores) left out. At least ``MIN_INTERVALS``; a threshold far above the
    scores, or moved far by a few outliers, refused. One audit line."""
    _check_who(operator, via, command_id)
    if not (isinstance(hours, (int, float)) and math.isfinite(hours) and hours > 0):
        raise FeedbackError(f"recalibrate: hours = {hours!r}: expected a number of hours "
                            f"above 0")
    check_false_alarm_rate(false_alarms_per_week, config.decision.interval_s)
    if false_alarms_per_week < MIN_FALSE_ALARMS_PER_WEEK:
        raise FeedbackError(f"recalibrate: false_alarms_per_week = {false_alarms_per_week:g}: "
                            f"expected at least {MIN_FALSE_ALARMS_PER_WEEK:g} (one false alarm "
                            f"in two years); fewer asks the fit for a tail that hours of "
                            f"scores cannot show, and the threshold lands where nothing "
                            f"alarms")
    m = _Machine(config)
    stored = m.stored()
    since = time.time() - hours * 3600.0
    # marked normal: in the bank, where their scores are held out among themselves, not
    # live scores (two scales mixed put a threshold at 77 against live scores of 9)
    normal = _given(stored, m.overlay)
    use = (stored.ts >= since) & ~stored.has(MAINTENANCE) & np.isfinite(stored.score) & \
        ~stored.has(ANOMALY) & ~normal
    idx = np.nonzero(use)[0]
    if len(idx) < MIN_INTERVALS:
        raise FeedbackError(f"recalibrate: only {len(idx)} usable interval(s) stored in the "
                            f"last {hours:g} h (scored, not in maintenance, not anomalous, not "
                            f"marked normal); need at least {MIN_INTERVALS} for a false-alarm "
                            f"rate: wait, or give more hours; nothing changed")
    scores = stored.score[idx].copy()
    live = m.live(m.overlay)
    if isinstance(live, BankRule):
        have = np.array([stored.statistics[i] is not None for i in idx])
        if have.any():              # as the current rule (bank + feedback) scores them
            scores[have] = live.score_statistics(_rows(stored, idx[have]))
    what = f"recalibration of {config.agent.machine}"
    threshold, p, fit = false_alarm_threshold(scores, false_alarms_per_week,
                                              config.decision.interval_s, what)
    exceeded = exceedance(scores, threshold, p, what)
    exceeded |= outliers(scores, threshold, false_alarms_per_week, config.decision.interval_s,
                         what)
    # the scores it was fitted on, not the alarming ones left out (4 x 15 let a threshold
    # of 25.7 through, fitted on 10 scores); a score may be below 0 (fused, standardised)
    highest = float(scores.max())
    if threshold > highest + (FAR_ABOVE - 1.0) * abs(highest):
        raise FeedbackError(f"recalibrate: the fitted threshold {threshold:.6g} is more than "
                            f"{FAR_ABOVE:g} times the highest score it was fitted on "
                            f"({highest:.6g}): nothing would alarm; ask for more false alarms "
                            f"a week (now {false_alarms_per_week:g}) or more hours; nothing "
                            f"changed")
    rest = exceeded.get("threshold_without_outliers")
    if rest is not None and threshold - rest > (OUTLIER_FACTOR - 1.0) * abs(rest):
        raise FeedbackError(f"recalibrate: the fitted threshold {threshold:.6g} is more than "
                            f"{OUTLIER_FACTOR:g} times the {rest:.6g} it would be without its "
                            f"{exceeded['outlier_intervals']} outlier interval(s) (a dropout, a "
                            f"knock, a voice): listen to that audio, or recalibrate over hours "
                            f"without it; nothing changed")
    before = m.threshold(m.overlay)
    override = CalibrationOverride.create(
        machine=config.agent.machine, threshold=threshold,
        false_alarms_per_week=false_alarms_per_week, interval_s=config.decision.interval_s,
        exceedance_per_interval=p, intervals=int(len(scores)),
        skipped_intervals=int(len(stored) - len(idx)), score_mean=float(scores.mean()),
        score_max=float(scores.max()), gamma=GammaParams(**fit.to_dict()),
        model=m.bundle.model_id, bundle_threshold=m.bundle.threshold,
        source=f"feedback store, last {hours:g} h", channel=config.audio.channel,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    audit.check_writable(m.state_dir)          # no change whose audit line cannot be written
    try:
        write_override(config.override_file, override)
    except ConfigError as exc:
        raise FeedbackError(str(exc)) from None
    after = m.threshold(m.overlay)
    details = {"threshold_before": before, "threshold_after": after,
               "intervals": int(len(scores)), "hours": hours,
               "false_alarms_per_week": false_alarms_per_week,
               "override_file": str(config.override_file)}
    line = _audit(m.state_dir, {"machine": config.agent.machine,
                                "action": "recalibrate-threshold", "outcome": "ok",
                                "operator": operator, "via": via,
                                "command_id": command_id, **details})
    return {"machine": config.agent.machine, "action": "recalibrate-threshold",
            "at": line["at"], **details, **exceeded, **m.warned(), **_warning(line)}


def _audit(state_dir, record: dict) -> dict:
    """The change's audit line, appended after the change was made. It was checked
    writable before (``audit.check_writable``); if it still fails (the disk filled in
    between) the change stands and is reported done, with a warning: a reply of "refused"
    for a change that was made misleads the operator into giving it again."""
    try:
        return audit.append(state_dir, record)
    except OSError as exc:
        warning = (f"done, but the audit log could not take its line "
                   f"({exc.strerror or exc}): the change is not on record")
        log.warning(f"WARNING: machine {record.get('machine')}: {record.get('action')} "
                    f"{warning}")
        return {**record, "at": audit.now_iso(), "_warning": warning}


def _warning(line: dict) -> dict:
    return {"warning": line["_warning"]} if "_warning" in line else {}

