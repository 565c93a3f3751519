"""harken: the device agent's command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from harken.common.errors import HarkenError, UsageError
from harken.agent import version
from harken.common.clitools import arg, command_parser, run_command
from harken.common.settings import (NAME_MAX, ClientId, Count, Finite, Name, PathText, Seconds,
                                    Text, TopicPrefix)
from harken.agent.features import PRESETS, LogMelExtractor, preset
from harken.agent.model.bundle import open_bundle
from harken.agent.sources.wavio import read_wav


def cmd_version(args: argparse.Namespace) -> int:
    print(f"harken {version()}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    """Log-mel features of WAV files with a preset: a check of the front end on site."""
    spec = preset(args.preset)
    extract = LogMelExtractor(spec)
    for path in args.files:
        x, _ = read_wav(path, spec.sample_rate)
        feats = extract(x)
        summary = {"file": path, "preset": spec.name, "seconds": round(x.size / spec.sample_rate, 3),
                   "frames": int(feats.shape[0]), "mels": int(feats.shape[1]),
                   "db_min": round(float(feats.min()), 2), "db_mean": round(float(feats.mean()), 2),
                   "db_max": round(float(feats.max()), 2)}
        if args.save:
            np.save(args.save, feats, allow_pickle=False)
        print(json.dumps(summary))
    if args.spec:
        print(json.dumps(spec.to_dict(), indent=2))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from harken.agent.config import load_config
    from harken.agent.build import preflight, resolve_threshold
    config = load_config(args.config)
    resolved = config.model_dump(exclude={"source_file": True, "mqtt": {"password"}})
    if config.mqtt.password is not None:
        resolved["mqtt"]["password"] = "(set, not shown)"
    if not config.multi:
        resolved.pop("machines")
    machines = []
    for view in config.machine_configs():
        try:
            bundle, pipeline = preflight(view, aside=False)   # what run refuses, refused too
        except HarkenError as exc:
            if not config.multi:
                raise
            raise type(exc)(f"machine {view.agent.machine}: {exc}") from None
        info = pipeline.scorer.enrollment
        threshold, origin = resolve_threshold(view, bundle, info)
        one = {"bundle": str(bundle.root), "model": bundle.model_id,
               "artifact": pipeline.scorer.artifact_kind,
               "threshold": threshold, "threshold_from": origin}
        if info is not None:
            one["bank"] = {"file": str(view.bank_file), "audio_s": info.audio_s,
                           "intervals": info.intervals,
                           "sessions": [s.model_dump() for s in info.sessions]}
        machines.append({"machine": view.agent.machine, "section": view.agent.section,
                         "channel": view.audio.channel, "source": view.audio.source,
                         "decision": view.decision.model_dump(), **one}
                        if config.multi else one)
    # one machine: its resolution; several: one entry each, with what it merged to
    resolved["resolved"] = machines if config.multi else machines[0]
    print(json.dumps(resolved, indent=2))
    return 0


def _state_for(config, verb: str):
    """The state folder's lock for a command that changes it (calibrate, enroll): refused
    while ``harken run`` holds it ("stop it, VERB, start it again"; docs/agent.md)."""
    from harken.agent.statelock import lock_state
    return lock_state(config.writable_folder("agent.state_dir", config.agent.state_dir),
                      f"harken {verb}", verb)


def cmd_enroll(args: argparse.Namespace) -> int:
    from harken.agent.config import load_config
    from harken.agent.site.enroll import enroll
    config = load_config(args.config)
    with _state_for(config, "enroll"):
        r = enroll(config, files=args.files, minutes=args.minutes,
                   append=args.append, false_alarms_per_week=args.false_alarms_per_week,
                   progress=not args.json, machine=args.machine)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"enrolled {r['new_intervals']} interval(s) of {r['interval_s']:g} s "
              f"({r['skipped_intervals']} skipped: silent, dropout, clipped or invalid); the bank "
              f"holds {r['intervals']} ({r['audio_s'] / 60:.1f} min, "
              f"{r['bank_bytes'] / 1024:.0f} KiB): {r['bank']}")
        print(f"threshold {r['threshold']:.4g} ({r['false_alarms_per_week']:g} false "
              f"alarm(s) per week on this audio); 'harken run' now uses the bank")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from harken.agent.config import load_config
    from harken.agent.runner import run_config
    return run_config(load_config(args.config), args.intervals)


def cmd_outbox(args: argparse.Namespace) -> int:
    """The refused store of each machine's outboxes (docs/mqtt.md "Refused messages"):
    list it, or put it back for sending. SQLite's locking makes it safe beside a running
    agent, which sends what comes back at its next round."""
    from harken.agent.config import load_config
    from harken.agent.sinks.mqtt.outbox import Outbox
    config = load_config(args.config)
    found = 0
    for view in config.select(args.machine):
        state = view.path(view.agent.state_dir)
        for path in (state / view.mqtt.outbox, state / f"sparkplug-{view.agent.machine}.db"):
            if not path.exists():
                continue
            found += 1
            box = Outbox(path, view.mqtt.outbox_max)
            try:
                if args.resend:
                    n = box.resend()
                    print(f"{path}: {n} refused message(s) back in the outbox")
                    if box.stale_dropped:     # never an old state over a newer one
                        print(f"{path}: {box.stale_dropped} refused retained message(s) "
                              f"dropped: a newer one of their topic was sent since")
                    continue
                for r in box.refused(limit=view.mqtt.outbox_max):
                    print(json.dumps({"file": str(path), "id": r.id, "topic": r.topic,
                                      "bytes": len(r.payload), "kind": r.kind,
                                      "created": round(r.created, 3),
                                      "refused": round(r.refused, 3), "reason": r.reason}))
            finally:
                box.close()
    if not found:
        raise UsageError(f"{args.config}: no outbox yet in agent.state_dir (the agent makes "
                         f"it when it first publishes)")
    return 0


def cmd_evidence(args: argparse.Namespace) -> int:
    """The evidence audio kept around a machine's anomaly events (docs/agent.md "Hearing
    the alarm (evidence audio)"): list it, or write one event's WAV out."""
    import shutil

    from harken.agent.config import load_config
    from harken.agent.sinks.evidence import check_wav, find, listing, read_meta
    config = load_config(args.config)
    views = config.select(args.machine)
    if args.list:
        rows = [row for view in views for row in listing(view)]
        if not rows and not any(v.evidence.enabled for v in views):
            raise UsageError(f"{args.config}: evidence audio is off (set [evidence] enabled = "
                             f"true; only events after that are kept)")
        for row in rows:
            print(json.dumps(row))
        return 0
    if len(views) > 1:
        raise UsageError(f"{args.config}: watches {len(views)} machines: name one with "
                         f"--machine")
    view = views[0]
    event = find(view, args.event)
    out = Path(args.out or f"evidence-{view.agent.machine}-{args.event}.wav")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: the folder {out.parent} does not exist")
    state = view.path(view.agent.state_dir).resolve()
    if out.resolve().is_relative_to(state):  # links followed: no state file overwritten
        raise UsageError(f"--out {out}: inside the agent's state folder {state}; write the "
                         f"WAV elsewhere (a file there is the agent's own)")
    try:
        meta = read_meta(event)       # one line naming a damaged JSON or a WAV cut short
        check_wav(event, meta)
        shutil.copyfile(event.wav, out)
    except FileNotFoundError as exc:
        if exc.filename not in (str(event.wav), str(event.meta)):
            raise UsageError(f"--out {out}: cannot write it ({exc.strerror})") from None
        # pruned by the running agent meanwhile
        raise UsageError(f"machine {view.agent.machine!r}: event {args.event}'s evidence was "
                         f"just removed (a newer event took its place)") from None
    except OSError as exc:
        where = exc.filename if exc.filename in (str(event.wav), str(event.meta)) else \
            f"--out {out}"
        raise UsageError(f"{where}: cannot copy ({exc.strerror or exc})") from None
    print(f"{out}: {meta['seconds']:g} s around event {args.event} (the start interval "
          f"begins at {meta['event_offset_s']:g} s; score {meta['score']}, threshold "
          f"{meta['threshold']})")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    import os

    from harken.agent.sinks.mqtt.broker import BrokerError
    from harken.agent.config import resolve_password
    from harken.agent.plant.watch import watch, watch_urls
    urls = watch_urls((args.broker or []) + (args.brokers or []))
    url = urls[0]                  # the credentials (the same in every URL that has them)
    url = next((u for u in urls if u.username), url)
    # --password-file, else the URL's, else $HARKEN_MQTT_PASSWORD (the config's one way)
    env = "HARKEN_MQTT_PASSWORD" if os.environ.get("HARKEN_MQTT_PASSWORD") else None
    password = resolve_password(None if args.password_file else url.password,
                                args.password_file, env, "HARKEN_MQTT_PASSWORD",
                                "--password-file")
    username = args.username or url.username
    if password is not None and not username:
        raise BrokerError("a password was given but no user name (--username or user@ in the URL)")
    # TLS is the URLs' scheme, as in the agent's mqtt.brokers (docs/watch.md): a TLS option
    # with mqtt:// URLs is refused, not taken as a wish for TLS on a plain port
    tls_opts = [o for o, v in (("--ca-file", args.ca_file), ("--cert-file", args.cert_file),
                                ("--key-file", args.key_file), ("--tls-insecure", args.tls_insecure))
                if v]
    if tls_opts and not url.tls:
        raise BrokerError(f"{' and '.join(tls_opts)} given but the broker URLs are mqtt:// "
                          f"(plain), which do not use TLS: write mqtts://host[:port] URLs")
    urls = [type(u)(u.host, u.port, u.tls, username, password) for u in urls]
    return watch(urls if len(urls) > 1 else urls[0], prefix=args.prefix,
                 client_id=args.client_id, as_json=args.json,
                 duration=args.seconds, ca_file=args.ca_file, cert_file=args.cert_file,
                 key_file=args.key_file, insecure=args.tls_insecure,
                 sparkplug_group=args.sparkplug_group or None, name=args.name,
                 max_agents=args.max_machines, forget_after_s=args.forget_after * 60,
                 web=args.web)


def cmd_devices(args: argparse.Namespace) -> int:
    from harken.agent.sources import SourceError
    try:
        import sounddevice as sd
        devices = sd.query_devices()
    except (OSError, ImportError) as exc:
        raise SourceError(f"PortAudio unavailable ({exc}); install libportaudio2") from None
    rows = []
    for i, d in enumerate(devices):
        if d["max_input_channels"] < 1:
            continue
        rates = []
        for r in (8000, 16000, 22050, 32000, 44100, 48000):
            try:
                sd.check_input_settings(device=i, channels=1, samplerate=r, dtype="float32")
                rates.append(r)
            except Exception:      # noqa: BLE001 - PortAudio says no in several ways
                pass
        rows.append({"index": i, "name": d["name"], "channels": d["max_input_channels"],
                     "default_rate": int(d["default_samplerate"]), "rates": rates})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['index']:>3}  {r['name']:<40} ch={r['channels']:<3} default "
                  f"{r['default_rate']} Hz  supports {r['rates']}")
        if not rows:
            print("no input devices")
    return 0


MAX_THREADS = 64         # as the config's model.threads (agent/config.py)
TOO_SHORT = "too_short"  # score: a file shorter than one model window (not scored)


def cmd_score(args: argparse.Namespace) -> int:
    """Offline scoring of recordings, interval by interval as ``run`` decides: a recording
    is ANOMALY when any of its report intervals is above the threshold (docs/agent.md
    "harken score"); a mean over an hour would hide the minute that matters."""
    from harken.agent.model.factory import make_scorer
    if not 1 <= args.threads <= MAX_THREADS:
        raise UsageError(f"--threads {args.threads}: expected 1 to {MAX_THREADS} (as the "
                         f"config's model.threads)")
    bundle = open_bundle(args.bundle)
    if bundle.needs_enrollment:
        raise UsageError(f"{args.bundle}: a general bundle has no reference bank to score "
                         f"against; enroll it on the machine ('harken enroll --config "
                         f"AGENT.toml'), then 'harken run'")
    section = bundle.sections[0] if args.section is None else args.section
    scorer = make_scorer(bundle, section, args.artifact, args.threads)
    threshold = args.threshold if args.threshold is not None else bundle.threshold
    # the clip length the bundle's threshold was fitted at (a report interval of 'run')
    interval_s = float(bundle.manifest.aggregation.get("interval_s", 10.0))
    rows = [_score_file(path, bundle, scorer, args.channel, threshold, interval_s)
            for path in args.files]
    # a file too short to score is the caller's mistake (exit 2), said after the others
    code = 2 if any(r["status"] == TOO_SHORT for r in rows) else 0
    if args.json:
        print(json.dumps(rows, indent=2))
        return code
    width = max(len(r["file"]) for r in rows)
    for r in rows:
        verdict = {True: "ANOMALY", False: "normal", None: "(no threshold)"}[r["anomaly"]] \
            if r["status"] == "ok" else f"{r['status']} (not scored)"
        score = "-" if r["score"] is None else f"{r['score']:.6f}"
        ivs = r.get("intervals", [])
        if len(ivs) > 1:
            above = sum(bool(i["anomaly"]) for i in ivs)
            verdict += f"  (max of {len(ivs)} intervals of {interval_s:g} s" + \
                (f", {above} above {threshold:.6g})" if threshold is not None else ")")
        print(f"{r['file']:<{width}}  {score:>12}  {verdict}")
        if args.intervals:
            for i in ivs:
                v = i["status"] if i["score"] is None else f"{i['score']:.6f}" + \
                    ("  ANOMALY" if i["anomaly"] else "")
                print(f"  {i['start_s']:>10.3f} s  {v}")
    return code


def _score_file(path: str, bundle, scorer, channel: int | None, threshold: float | None,
                interval_s: float) -> dict:
    """One recording scored as ``run`` scores it: report intervals of ``interval_s`` (the
    same pipeline: DC removal, health check (silent, clipped, invalid: not scored), features
    or a score that are not finite make an interval invalid; docs/agent.md "Audio
    health"). The row's score is the highest interval's; a recording shorter than one
    interval is scored whole, with a warning (its score is not comparable)."""
    import logging

    from harken.agent.decision import Decision
    from harken.agent.decision.health import check_audio
    from harken.agent.pipeline import Pipeline
    from harken.agent.sources.dc import remove_dc
    spec = bundle.spec
    x, _ = read_wav(path, spec.sample_rate, channel=channel, finite=False)
    seconds = x.size / spec.sample_rate
    pipeline = Pipeline(scorer, Decision(float("inf")), interval_s)
    step = pipeline.interval_samples          # an interval at a time: features of an hour
    results = [r for i in range(0, x.size, step) for r in pipeline.push(x[i:i + step])]
    results += pipeline.finish()
    warning = None
    if results:
        ivs = [{"start_s": round(k * pipeline.interval_samples / spec.sample_rate, 3),
                "status": r.status, "score": None if r.score is None else round(r.score, 6),
                "anomaly": None if r.score is None or threshold is None
                else bool(r.score > threshold)} for k, r in enumerate(results)]
        scored = [i for i in ivs if i["score"] is not None]
        first = results[0]
        health_status = "ok" if scored else first.status
        score = max(i["score"] for i in scored) if scored else None
        rms = max((r.rms_dbfs for r in results if np.isfinite(r.rms_dbfs)), default=np.nan)
        dc = [r.extra["dc_offset"] for r in results if "dc_offset" in r.extra]
        tail = x.size - len(results) * pipeline.interval_samples
        if tail:
            warning = (f"the last {tail / spec.sample_rate:.6g} s ({tail} samples) are less "
                       f"than an interval and not scored (as in run)")
    else:
        feats = LogMelExtractor(spec)(remove_dc(x, spec.sample_rate))
        if len(feats) < spec.window_frames:
            # one file too short for the bundle's window (AEGAN-AD's is 4.19 s) must not stop
            # the batch: its row says so, the others are scored, the exit code is 2
            warning = (f"{seconds:.2f} s is shorter than one model window "
                       f"({spec.window_seconds:.2f} s): not scored")
            logging.getLogger("harken.agent.cli").warning(f"WARNING: {path}: {warning}")
            return {"file": path, "status": TOO_SHORT, "score": None, "threshold": threshold,
                    "anomaly": None, "seconds": round(seconds, 6), "rms_dbfs": None,
                    "warning": warning}
        health, score, ivs = check_audio(x), None, None
        if health.ok:
            score = scorer.score_logmel(feats) if np.isfinite(feats).all() else float("nan")
            if not np.isfinite(score):
                health, score = health.invalid(), None
        health_status, rms = health.status, health.rms_dbfs
        score = None if score is None else round(score, 6)
        dc = [round(health.dc_offset, 4)] if health.large_dc_offset else []
        # compared in samples at the model's rate: 9.9994 s is not printed as "10.00 s"
        warning = (f"{seconds:.6g} s ({x.size} samples at {spec.sample_rate} Hz) is shorter "
                   f"than the {interval_s:g}-s interval ({pipeline.interval_samples} samples) "
                   f"the threshold holds for: the score is not comparable with it")
    row = {"file": path, "status": health_status, "score": score, "threshold": threshold,
           "anomaly": None if score is None or threshold is None else bool(score > threshold),
           "seconds": round(seconds, 6),
           "rms_dbfs": round(rms, 1) if np.isfinite(rms) else None}
    if ivs is not None:
        row["intervals"] = ivs
    if dc:
        row["dc_offset"] = max(dc, key=abs)
    if warning:
        row["warning"] = warning
        logging.getLogger("harken.agent.cli").warning(f"WARNING: {path}: {warning}")
    return row


def cmd_calibrate(args: argparse.Namespace) -> int:
    from harken.agent.site.calibrate import calibrate
    from harken.agent.config import load_config
    config = load_config(args.config)
    with _state_for(config, "calibrate"):
        result = calibrate(config, files=args.files, minutes=args.minutes,
                           false_alarms_per_week=args.false_alarms_per_week,
                           plot=None if args.no_plot else args.plot, progress=not args.quiet,
                           machine=args.machine)
    print(json.dumps(result, indent=2))
    failed = [r["error"] for r in result.get("machines", {}).values()
              if "error" in r]
    for line in failed:
        print(f"harken: error: {line}", file=sys.stderr)
    return 2 if failed else 0


def _operator() -> str:
    """Who the audit log names by default: the person behind sudo, else this login."""
    import getpass
    import os
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):          # a uid with no name (a container): said as such
        return f"uid-{os.getuid()}"


def _one_machine(config, machine: str | None):
    views = config.select(machine)           # an unknown --machine refused, listing them
    if len(views) > 1:
        raise UsageError(f"{config.source_file}: give --machine: this config watches "
                         f"{[v.agent.machine for v in views]}")
    return views[0]


def _command(config, machine: str | None, body: dict, operator: str, verb: str) -> dict:
    """``body`` carried out on one machine: by the running daemon through its control
    socket, else (no daemon) here, under the state lock, through the same dispatcher
    (docs/agent.md "The control socket"). A refusal is one line, exit 2."""
    import uuid

    from harken.agent.operator.commands import CommandRefused, Commands, Target
    from harken.agent.operator.control import hand_back, request
    from harken.agent.operator.maintenance import Maintenance
    from harken.agent.statelock import StateLock
    view = _one_machine(config, machine)
    name = view.agent.machine
    body = {"id": f"cli-{uuid.uuid4().hex}", **body, "operator": operator, "machine": name}
    reply = request(config.path(config.agent.state_dir), body)
    if reply is None:                           # no daemon: the files, under the lock
        folder = config.writable_folder("agent.state_dir", config.agent.state_dir)

        def refusal(pid, command, where):
            if command != "harken run":         # another CLI command: busy, not a daemon
                return (f"{command} (PID {pid}) is using the state folder {where}; try "
                        f"again when it is done")
            return (f"{command} (PID {pid}) holds the state folder {where} but its control "
                    f"socket does not answer (still starting, or stopping); try again")
        with StateLock(folder, f"harken {verb}").acquire(refusal):
            commands = Commands(folder, {name: Target(view, Maintenance(folder, name))})
            reply = commands.handle(json.dumps(body).encode(), "cli")
        hand_back(folder)
    if not reply.get("ok"):
        raise CommandRefused(f"machine {name}: {verb} refused: {reply.get('reason')}")
    return reply


def _when(ts: float | None) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def _maintenance_line(state: dict) -> str:
    if not state["on"]:
        return f"machine {state['machine']}: not in maintenance"
    until = "until turned off" if state["until"] is None else f"until {_when(state['until'])}"
    return f"machine {state['machine']}: in maintenance {until} (by {state['by']})"


def cmd_maintenance(args: argparse.Namespace) -> int:
    from harken.agent.config import load_config
    from harken.agent.operator.control import request
    from harken.agent.operator.maintenance import Maintenance
    config = load_config(args.config)
    if args.seconds is not None and args.state != "on":
        raise UsageError(f"--for goes with 'on', not '{args.state}'")
    if args.state == "status":
        states = []
        for view in config.select(args.machine):
            reply = request(config.path(config.agent.state_dir),
                            {"id": "cli-status", "command": "maintenance", "state": "status",
                             "operator": args.operator, "machine": view.agent.machine})
            if reply is not None and not reply.get("ok"):
                raise UsageError(f"machine {view.agent.machine}: {reply.get('reason')}")
            states.append(reply["result"] if reply is not None else Maintenance(
                view.path(view.agent.state_dir), view.agent.machine, read_only=True).state())
        for state in states:
            print(json.dumps(state) if args.json else _maintenance_line(state))
        return 0
    body = {"command": "maintenance", "state": args.state}
    if args.seconds is not None:
        body["for"] = args.seconds
    reply = _command(config, args.machine, body, args.operator, "maintenance")
    unchanged = " (unchanged: it already was)" if reply["result"].get("unchanged") else ""
    print(json.dumps(reply) if args.json else _maintenance_line(reply["result"]) + unchanged)
    if reply["result"].get("warning") and not args.json:
        print(f"harken: warning: {reply['result']['warning']}", file=sys.stderr)
    return 0


def duration_arg(text: str) -> float:
    """``--for``: 90s, 30m, 2h, 1d or seconds, 1 s to 30 days."""
    from harken.agent.operator.maintenance import parse_duration
    try:
        return parse_duration(text, "--for")
    except HarkenError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--for = ")) from None


def time_arg(text: str) -> float:
    """``--from``/``--to``: epoch seconds or an ISO 8601 time (without an offset: this
    device's local time)."""
    from harken.agent.operator.commands import _epoch
    try:
        return _epoch(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: expected epoch seconds or an ISO "
                                         f"8601 time such as 2026-05-04T13:20") from None


def cmd_feedback(args: argparse.Namespace) -> int:
    from harken.agent.config import load_config
    from harken.agent.operator import audit
    if args.end is not None and args.start is None:
        raise UsageError("--to goes with --from")
    config = load_config(args.config)
    if (args.list or args.events) and args.verdict:
        raise UsageError("--list and --events take no verdict ('normal' goes with --event SEQ "
                         "or --from T --to T)")
    if args.list:
        names = {v.agent.machine for v in config.select(args.machine)}
        for line in audit.read(config.path(config.agent.state_dir)):
            if line.get("machine") in names:
                print(json.dumps(line))
        return 0
    if args.events:
        from harken.agent.operator.feedback import recent_events
        for view in config.select(args.machine):
            for event in recent_events(view):
                print(json.dumps(event))
        return 0
    marking = args.event is not None or args.start is not None or args.end is not None
    if marking != (args.verdict == "normal"):
        raise UsageError("say what the sound was: 'harken feedback --event SEQ normal' "
                         "(or --from T --to T normal); --undo, --list and --events take no "
                         "verdict")
    if args.event is not None:
        body: dict = {"command": "feedback", "event": args.event}
    elif args.undo:
        body = {"command": "feedback", "undo": True}
    else:
        if args.start is None or args.end is None:
            raise UsageError("--from and --to go together")
        if args.start >= args.end:
            raise UsageError("--from must be before --to")
        body = {"command": "feedback", "from": args.start, "to": args.end}
    reply = _command(config, args.machine, body, args.operator, "feedback")
    print(json.dumps(reply if args.json else {"machine": reply["machine"], **reply["result"]}))
    return 0


def systemd_unit(exec_start: str, config: str) -> str:
    """The packaged unit (systemd/harken.service) with ExecStart for this install, so a
    wheel install under pipx or /opt/venv needs no repository to find the unit."""
    from importlib.resources import files

    from harken.agent.systemd import unit_text
    return unit_text((files("harken.systemd") / "harken.service").read_text(), exec_start,
                     config)


def cmd_systemd_unit(args: argparse.Namespace) -> int:
    import shutil
    # the harken script beside this interpreter (venv, pipx), else the one on PATH
    beside = Path(sys.executable).parent / "harken"
    exe = args.exec if args.exec is not None else (
        str(beside) if beside.exists() else shutil.which("harken"))
    if exe is None:
        raise UsageError("no harken executable found beside this Python or on PATH: "
                         "give one with --exec")
    sys.stdout.write(systemd_unit(exe, args.config))
    return 0


def arg_web(text: str) -> tuple[str, int]:
    """``--web [HOST:]PORT`` read, or a usage error saying what is expected."""
    from harken.agent.plant.watch import web_address
    try:
        return web_address(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def plot_name(text: str) -> str:
    """``--plot``: a path without control characters ('' draws no plot, as --no-plot); its
    format is checked against what matplotlib can write before any audio is read
    (agent/site/calibrate.py), not after the capture."""
    if text == "":
        return text
    return arg(PathText)(text)


class OnlyOnce(argparse._StoreAction):
    """An option given at most once: argparse keeps the last of ``--machine a --machine b``,
    so an operator who meant both would silence (or wake) only b without a word
    (docs/agent.md "Maintenance"); refused in one line instead."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) not in (None, self.default):
            parser.error(f"argument {option_string}: given twice ({getattr(namespace, self.dest)!s}"
                         f" and {values!s}): name one, and run the command once per machine")
        super().__call__(parser, namespace, values, option_string)


def build_parser() -> argparse.ArgumentParser:
    p, sub = command_parser("harken", "Harken device agent.")
    sub.add_parser("version", help="print the version").set_defaults(func=cmd_version)
    f = sub.add_parser("features", help="compute log-mel features of WAV files")
    f.add_argument("files", nargs="+")
    f.add_argument("--preset", choices=sorted(PRESETS), default="dcase2020-ae")
    f.add_argument("--save", help="write the (last file's) features to this .npy")
    f.add_argument("--spec", action="store_true", help="also print the feature spec")
    f.set_defaults(func=cmd_features)
    r = sub.add_parser("run", help="listen, score and report (the daemon)")
    r.add_argument("--config", required=True, help="TOML file (firmware_configs/ has examples)")
    r.add_argument("--intervals", type=arg(Count(1, 10**9, "intervals")),
                   help="stop after this many report intervals")
    r.set_defaults(func=cmd_run)
    c = sub.add_parser("check-config", help="validate a config and print it resolved")
    c.add_argument("config")
    c.set_defaults(func=cmd_check_config)
    d = sub.add_parser("devices", help="audio input devices and the rates they accept")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_devices)
    s = sub.add_parser("score", help="score recordings offline with a bundle")
    s.add_argument("bundle", help="bundle folder or .tar.gz")
    s.add_argument("files", nargs="+", help="WAV files")
    s.add_argument("--section", type=arg(Count(0, 99)),
                   help="machine section (default: the bundle's first)")
    s.add_argument("--artifact", help="onnx-int8, tflite-int8, ... (default: an int8 one)")
    s.add_argument("--threads", type=arg(Count(1, MAX_THREADS, "threads")), default=1,
                   help=f"1 to {MAX_THREADS}")
    s.add_argument("--threshold", type=arg(Finite), help="instead of the bundle's")
    s.add_argument("--channel", type=arg(Count(1, 64)), help="score this channel (1-based) of "
                   "multi-channel recordings (default: the mix of their channels)")
    s.add_argument("--json", action="store_true", help="one row per file, its intervals' "
                   "scores included")
    s.add_argument("--intervals", action="store_true", help="print each interval's score")
    s.set_defaults(func=cmd_score)
    n = sub.add_parser("enroll", help="learn this machine's reference bank on site "
                       "(a general bundle: 'harken-export general')")
    n.add_argument("--config", required=True)
    n.add_argument("--machine", action=OnlyOnce, type=arg(Name),
                   help="the machine to enroll, of a config that watches "
                   "several ([[machines]])")
    n.add_argument("--minutes", type=float, default=10.0,
                   help="minutes of live audio to record (default 10)")
    n.add_argument("--files", nargs="+", help="enroll these recordings instead of the "
                   "microphone (paths relative to the current folder)")
    n.add_argument("--append", action="store_true", help="add to the bank (a new operating "
                   "condition) instead of replacing it")
    n.add_argument("--false-alarms-per-week", type=float, default=1.0,
                   help="tolerated false alarms per week for the threshold (default 1)")
    n.add_argument("--json", action="store_true", help="print the result as JSON, no progress")
    n.set_defaults(func=cmd_enroll)
    k = sub.add_parser("calibrate", help="set the threshold on site from normal operation")
    k.add_argument("--config", required=True)
    k.add_argument("--machine", action=OnlyOnce, type=arg(Name),
                   help="calibrate only this machine of a config that watches "
                   "several (default: every machine, from one capture per input)")
    k.add_argument("--minutes", type=float, default=30.0,
                   help="minutes of live audio to score (default 30)")
    k.add_argument("--files", nargs="+", help="score these recordings instead of the "
                   "microphone (paths relative to the current folder)")
    k.add_argument("--false-alarms-per-week", type=float, default=1.0,
                   help="tolerated false alarms per week (default 1)")
    k.add_argument("--plot", type=plot_name, default="calibration.png", help="the histogram's file, "
                   "any format matplotlib writes (default calibration.png beside the override file)")
    k.add_argument("--no-plot", action="store_true")
    k.add_argument("--quiet", action="store_true")
    k.set_defaults(func=cmd_calibrate)
    w = sub.add_parser("watch", help="plant side: a live table of every node's scores, or "
                       "the messages as JSON lines")
    w.add_argument("--broker", action="extend", nargs="+",
                   help="mqtt://[user@]host[:port], or mqtts://... for TLS (port 8883); "
                   "several (or comma-separated): a cluster's nodes, the next used when one "
                   "goes (docs/watch.md)")
    w.add_argument("brokers", nargs="*", metavar="URL",
                   help="broker URLs, as --broker")
    w.add_argument("--prefix", type=arg(TopicPrefix), default="harken",
                   help="topic prefix (default harken)")
    w.add_argument("--username", type=arg(Text(256)))
    w.add_argument("--password-file", help="first line is the password (or set "
                   "HARKEN_MQTT_PASSWORD)")
    w.add_argument("--ca-file", help="CA certificate of the broker (implies TLS)")
    w.add_argument("--cert-file", help="client certificate, where the broker asks for one")
    w.add_argument("--key-file", help="its private key")
    w.add_argument("--tls-insecure", action="store_true",
                   help="do not verify the broker's certificate (warned about)")
    w.add_argument("--client-id", type=arg(ClientId),
                   help="persistent session id (default harken-watch-USER-HOST-NAME, NAME the "
                   "--name or the terminal): messages published while away are delivered on "
                   "return")
    w.add_argument("--name", help="this watcher's name in its default client id (two watchers "
                   "on one host need two names; default: the terminal)")
    w.add_argument("--max-machines", type=int, default=1000,
                   help="machines kept in the view, least recently heard forgotten first "
                   "(default 1000)")
    w.add_argument("--forget-after", type=float, default=1440,
                   metavar="MINUTES", help="forget a machine not heard from for this long "
                   "(default 1440 = a day; 0: never)")
    w.add_argument("--sparkplug-group", type=arg(Text(NAME_MAX, min_length=0, forbid="/+#")),
                   default="harken",
                   help="also read Sparkplug B agents of this group (mqtt.group_id; default "
                   "harken; '' for none)")
    w.add_argument("--json", action="store_true", help="one JSON line per message")
    w.add_argument("--web", metavar="[HOST:]PORT", type=arg_web,
                   help="also serve a live web page of the fleet here (HOST defaults to "
                   "127.0.0.1: this computer only; docs/watch.md \"The web page\")")
    w.add_argument("--for", dest="seconds", type=arg(Seconds(0, 365 * 86400, lo_open=True)),
                   help="stop after this many seconds (default: until Ctrl-C)")
    w.set_defaults(func=cmd_watch)
    o = sub.add_parser("outbox", help="the messages the broker refused: list them (JSON "
                       "lines), or send them again")
    o.add_argument("--config", required=True)
    o.add_argument("--machine", action=OnlyOnce, help="only this machine of a config that watches several")
    what = o.add_mutually_exclusive_group(required=True)
    what.add_argument("--list", action="store_true", help="one JSON line per refused message")
    what.add_argument("--resend", action="store_true", help="put every refused message back "
                      "at the end of its outbox (sent as history)")
    o.set_defaults(func=cmd_outbox)
    fb = sub.add_parser("feedback", help="tell a machine that an alarm (or a time range) was "
                        "normal, undo that, or list what was done (the audit log)")
    fb.add_argument("--config", required=True)
    fb.add_argument("--machine", action=OnlyOnce, type=arg(Name),
                    help="the machine (required when the config "
                    "watches several)")
    form = fb.add_mutually_exclusive_group(required=True)
    form.add_argument("--event", type=arg(Count(0, 2**63 - 1)), metavar="SEQ",
                      help="the seq of the anomaly event (its start) that was normal")
    form.add_argument("--from", dest="start", type=time_arg, metavar="T",
                      help="start of a normal time range (epoch or ISO 8601; with --to)")
    form.add_argument("--undo", action="store_true", help="undo the last feedback")
    form.add_argument("--list", action="store_true", help="the audit log's lines of the "
                      "machine(s), one JSON line each")
    form.add_argument("--events", action="store_true", help="the anomaly events the feedback "
                      "store holds (their seqs, times, peak scores), one JSON line each")
    fb.add_argument("--to", dest="end", type=time_arg, metavar="T", help="end of the time range")
    fb.add_argument("verdict", nargs="?", choices=["normal"],
                    help="what the sound was: normal")
    fb.add_argument("--operator", type=arg(Text(128)), default=_operator(),
                    help="who gives it, for the audit log (default: the login user)")
    fb.add_argument("--json", action="store_true", help="print the agent's whole reply")
    fb.set_defaults(func=cmd_feedback)
    mt = sub.add_parser("maintenance", help="put a machine in maintenance (scored, no "
                        "alarms), end it, or show it")
    mt.add_argument("--config", required=True)
    mt.add_argument("--machine", action=OnlyOnce, type=arg(Name),
                    help="the machine (required for on/off when "
                    "the config watches several)")
    mt.add_argument("state", choices=["on", "off", "status"])
    mt.add_argument("--for", dest="seconds", type=duration_arg, metavar="DURATION",
                    help="end by itself after this long: 90s, 30m, 2h, 1d or seconds (at most "
                    "30 days; default: until 'off')")
    mt.add_argument("--operator", type=arg(Text(128)), default=_operator(),
                    help="who, for the audit log (default: the login user)")
    mt.add_argument("--json", action="store_true", help="print the state as JSON")
    mt.set_defaults(func=cmd_maintenance)
    e = sub.add_parser("evidence", help="the audio kept around anomaly events ([evidence] "
                       "enabled): list it, or write one event's WAV")
    e.add_argument("--config", required=True)
    e.add_argument("--machine", action=OnlyOnce, type=arg(Name),
                   help="the machine, of a config that watches "
                   "several")
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--event", type=arg(Count(1, 2**63 - 1, "seq")),
                       help="the seq of the anomaly start event")
    which.add_argument("--list", action="store_true", help="one JSON line per kept event")
    e.add_argument("--out", type=arg(PathText), help="the WAV to write (default "
                   "./evidence-MACHINE-SEQ.wav)")
    e.set_defaults(func=cmd_evidence)
    u = sub.add_parser("systemd-unit", help="print the systemd unit, its ExecStart pointing "
                       "at this install (docs/deploy.md)")
    u.add_argument("--config", default="/etc/harken/agent.toml",
                   help="the config the service runs (default /etc/harken/agent.toml)")
    u.add_argument("--exec", help="the harken executable (default: this install's)")
    u.set_defaults(func=cmd_systemd_unit)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)       # HarkenError, OSError: exit 2


if __name__ == "__main__":
    sys.exit(main())
