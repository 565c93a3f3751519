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
from harken.agent.sources.wavio import WavError, read_wav


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
            bundle, pipeline = preflight(view)   # what run would refuse, refused here too
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


def cmd_enroll(args: argparse.Namespace) -> int:
    from harken.agent.config import load_config
    from harken.agent.site.enroll import enroll
    r = enroll(load_config(args.config), files=args.files, minutes=args.minutes,
               append=args.append, false_alarms_per_week=args.false_alarms_per_week,
               progress=not args.json, machine=args.machine)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"enrolled {r['new_intervals']} interval(s) of {r['interval_s']:g} s "
              f"({r['skipped_intervals']} skipped: silent, clipped or invalid); the bank "
              f"holds {r['intervals']} ({r['audio_s'] / 60:.1f} min, "
              f"{r['bank_bytes'] / 1024:.0f} KiB): {r['bank']}")
        print(f"threshold {r['threshold']:.4g} ({r['false_alarms_per_week']:g} false "
              f"alarm(s) per week on this audio); 'harken run' now uses the bank")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from harken.agent.config import load_config
    from harken.agent.runner import run_config
    return run_config(load_config(args.config), args.intervals)


def cmd_watch(args: argparse.Namespace) -> int:
    import os

    from harken.agent.sinks.mqtt.broker import BrokerError, parse_broker_url
    from harken.agent.config import resolve_password
    from harken.agent.plant.watch import watch
    url = parse_broker_url(args.broker)
    # --password-file, else the URL's, else $HARKEN_MQTT_PASSWORD (the config's one way)
    env = "HARKEN_MQTT_PASSWORD" if os.environ.get("HARKEN_MQTT_PASSWORD") else None
    password = resolve_password(None if args.password_file else url.password,
                                args.password_file, env, "HARKEN_MQTT_PASSWORD",
                                "--password-file")
    username = args.username or url.username
    if password is not None and not username:
        raise BrokerError("a password was given but no user name (--username or user@ in the URL)")
    url = type(url)(url.host, url.port, url.tls or bool(args.ca_file), username, password)
    return watch(url, prefix=args.prefix, client_id=args.client_id, as_json=args.json,
                 duration=args.seconds, ca_file=args.ca_file, cert_file=args.cert_file,
                 key_file=args.key_file, insecure=args.tls_insecure,
                 sparkplug_group=args.sparkplug_group or None)


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


def cmd_score(args: argparse.Namespace) -> int:
    """Offline scoring of recordings: one score per file (its windows reduced together)."""
    from harken.agent.model.factory import make_scorer
    bundle = open_bundle(args.bundle)
    if bundle.needs_enrollment:
        raise UsageError(f"{args.bundle}: a general bundle has no reference bank to score "
                         f"against; enroll it on the machine ('harken enroll --config "
                         f"AGENT.toml'), then 'harken run'")
    section = bundle.sections[0] if args.section is None else args.section
    scorer = make_scorer(bundle, section, args.artifact, args.threads)
    extract = LogMelExtractor(bundle.spec)
    threshold = args.threshold if args.threshold is not None else bundle.threshold
    rows = []
    for path in args.files:
        x, _ = read_wav(path, bundle.spec.sample_rate, channel=args.channel)
        feats = extract(x)
        if len(feats) < bundle.spec.window_frames:
            raise WavError(f"{path}: {x.size / bundle.spec.sample_rate:.2f} s is shorter than "
                           f"one model window ({bundle.spec.window_seconds:.2f} s)")
        score = scorer.score_logmel(feats)
        rows.append({"file": path, "score": round(score, 6), "threshold": threshold,
                     "anomaly": None if threshold is None else bool(score > threshold)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["file"]) for r in rows)
        for r in rows:
            verdict = {True: "ANOMALY", False: "normal", None: "(no threshold)"}[r["anomaly"]]
            print(f"{r['file']:<{width}}  {r['score']:>12.6f}  {verdict}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from harken.agent.site.calibrate import calibrate
    from harken.agent.config import load_config
    result = calibrate(load_config(args.config), files=args.files, minutes=args.minutes,
                       false_alarms_per_week=args.false_alarms_per_week,
                       plot=None if args.no_plot else args.plot, progress=not args.quiet,
                       machine=args.machine)
    print(json.dumps(result, indent=2))
    failed = [r["error"] for r in result.get("machines", {}).values()
              if "error" in r]
    for line in failed:
        print(f"harken: error: {line}", file=sys.stderr)
    return 2 if failed else 0


def systemd_unit(exec_start: str, config: str) -> str:
    """The packaged unit (systemd/harken.service) with ExecStart for this install, so a
    wheel install under pipx or /opt/venv needs no repository to find the unit."""
    from importlib.resources import files
    unit = (files("harken.systemd") / "harken.service").read_text()
    lines = [f"ExecStart={exec_start} run --config {config}" if ln.startswith("ExecStart=")
             else ln for ln in unit.splitlines()]
    return "\n".join(lines) + "\n"


def cmd_systemd_unit(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path
    # the harken script beside this interpreter (venv, pipx), else the one on PATH
    beside = Path(sys.executable).parent / "harken"
    exe = args.exec or (str(beside) if beside.exists() else shutil.which("harken"))
    if not exe:
        raise UsageError("no harken executable found beside this Python or on PATH: "
                         "give one with --exec")
    sys.stdout.write(systemd_unit(exe, args.config))
    return 0


def png_name(text: str) -> str:
    """``--plot``: a path without control characters whose suffix is .png (or none, and
    matplotlib adds it): another suffix is refused as the option is parsed, not by
    matplotlib after the capture ('' draws no plot, as --no-plot)."""
    if text == "":
        return text
    name = arg(PathText)(text)
    if Path(name).suffix.lower() not in ("", ".png"):
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: the histogram is a PNG: expected a "
                                         f"file name ending in .png")
    return name


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
    s.add_argument("--threads", type=arg(Count(1, 64, "threads")), default=1)
    s.add_argument("--threshold", type=arg(Finite), help="instead of the bundle's")
    s.add_argument("--channel", type=arg(Count(1, 64)), help="score this channel (1-based) of "
                   "multi-channel recordings (default: the mix of their channels)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_score)
    n = sub.add_parser("enroll", help="learn this machine's reference bank on site "
                       "(a general bundle: 'harken-export general')")
    n.add_argument("--config", required=True)
    n.add_argument("--machine", type=arg(Name), help="the machine to enroll, of a config that watches "
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
    k.add_argument("--machine", type=arg(Name), help="calibrate only this machine of a config that watches "
                   "several (default: every machine, from one capture per input)")
    k.add_argument("--minutes", type=float, default=30.0,
                   help="minutes of live audio to score (default 30)")
    k.add_argument("--files", nargs="+", help="score these recordings instead of the "
                   "microphone (paths relative to the current folder)")
    k.add_argument("--false-alarms-per-week", type=float, default=1.0,
                   help="tolerated false alarms per week (default 1)")
    k.add_argument("--plot", type=png_name, default="calibration.png", help="histogram PNG (default "
                   "calibration.png beside the override file)")
    k.add_argument("--no-plot", action="store_true")
    k.add_argument("--quiet", action="store_true")
    k.set_defaults(func=cmd_calibrate)
    w = sub.add_parser("watch", help="plant side: a live table of every node's scores, or "
                       "the messages as JSON lines")
    w.add_argument("--broker", required=True,
                   help="mqtt://[user@]host[:port], or mqtts://... for TLS (port 8883)")
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
                   help="persistent session id (default harken-watch-HOSTNAME): messages "
                   "published while away are delivered on return")
    w.add_argument("--sparkplug-group", type=arg(Text(NAME_MAX, min_length=0, forbid="/+#")),
                   default="harken",
                   help="also read Sparkplug B agents of this group (mqtt.group_id; default "
                   "harken; '' for none)")
    w.add_argument("--json", action="store_true", help="one JSON line per message")
    w.add_argument("--for", dest="seconds", type=arg(Seconds(0, 365 * 86400, lo_open=True)),
                   help="stop after this many seconds (default: until Ctrl-C)")
    w.set_defaults(func=cmd_watch)
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
