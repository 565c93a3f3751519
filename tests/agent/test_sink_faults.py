"""Sinks that do not take the agent down (agent/sinks/jsonlines.py, agent/runner.py): a
file on a full disk is reported once, retried with back-off, never tears a line, and never
stops scoring or the other sinks."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from harken.agent.config import load_config
from harken.agent.build import build
from harken.agent.decision.records import Stopped
from harken.agent.runner import Listener, Machine, Runner
from harken.agent.sinks.jsonlines import JsonLinesSink, LineFile
from harken.testkit.files import write_agent_config
from tests.agent.test_runner_parts import MemorySink, ToneSource
from tests.helpers import collect_lines, tmpfs, wait_for


def fill(folder):
    """Fill the file system of ``folder`` to the last byte; the filler is returned."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 4096, 512, 64, 1):
            try:
                while True:
                    os.write(fd, b"x" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def whole_lines(path):
    text = path.read_text()
    assert text == "" or text.endswith("\n"), text[-80:]
    return [json.loads(line) for line in text.splitlines()]      # each line a whole record


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_full_disk_never_tears_a_line_and_the_held_lines_follow_when_room_returns(tmp_path):
    with tmpfs(tmp_path / "disk", "64k") as disk:
        clock = Clock()
        f = LineFile(disk / "out.jsonl", clock=clock)
        filler = fill(disk)
        os.truncate(filler, os.path.getsize(filler) - 4096)    # one page: room for 2.7 lines
        lines = [json.dumps({"seq": i, "pad": "p" * 1500}).encode() + b"\n" for i in range(8)]
        for line in lines[:5]:
            f.write(line)
        assert f.failed == "No space left on device" and f.errors == 1
        written = whole_lines(disk / "out.jsonl")                 # the short write cut back
        assert [r["seq"] for r in written] == [0, 1]
        assert len(f.pending) == 3
        f.write(lines[5])                                 # inside the back-off: not tried
        assert f.errors == 1
        clock.t = 1.5                                     # tried again: still full
        f.write(lines[6])
        assert f.errors == 2 and f.failed
        filler.unlink()
        clock.t = 10.0
        f.write(lines[7])
        assert f.failed is None and not f.pending and f.dropped == 0
        assert [r["seq"] for r in whole_lines(disk / "out.jsonl")] == list(range(8))
        f.close()


def test_a_file_that_cannot_even_be_cut_back_starts_its_next_line_on_a_new_line(tmp_path):
    out = tmp_path / "out.jsonl"
    f = LineFile(out)
    f.write(b'{"seq": 1}\n')
    os.write(f._fd, b'{"seq": 2, "torn')                     # half a line, as a crash leaves
    f._torn = True
    f.write(b'{"seq": 3}\n')
    assert out.read_text().splitlines() == ['{"seq": 1}', '{"seq": 2, "torn', '{"seq": 3}']
    full = LineFile(Path("/dev/full"))                  # ENOSPC; ftruncate fails too
    full.write(b"x\n")
    assert full.failed == "No space left on device" and full._torn
    assert len(full.pending) == 1


def test_held_lines_are_bounded_and_what_is_dropped_is_counted(tmp_path):
    f = LineFile(Path("/dev/full"), pending_max=3)
    for i in range(5):
        f.write(f"{i}\n".encode(), force=True)
    assert list(f.pending) == [b"2\n", b"3\n", b"4\n"] and f.dropped == 2


def test_a_moved_away_or_deleted_output_file_is_written_again_at_its_path(tmp_path):
    out = tmp_path / "logs" / "out.jsonl"
    sink = JsonLinesSink(stdout=False, file=out)
    sink.status(Stopped(1))
    out.rename(tmp_path / "logs" / "out.jsonl.1")              # logrotate without copytruncate
    sink.status(Stopped(2))
    (tmp_path / "logs" / "out.jsonl.1").unlink()
    out.unlink()
    os.rmdir(tmp_path / "logs")                                # its folder removed, too
    sink.status(Stopped(3))
    sink.close()
    assert [r["intervals"] for r in whole_lines(out)] == [3]


class BrokenSink(MemorySink):
    """Raises at every call until ``healed``, as a plugin's bug or a dead disk would."""
    name = "test-broken"

    def __init__(self):
        super().__init__()
        self.healed = False

    def interval(self, result):
        if not self.healed and result.seq >= 42:
            raise OSError(28, "No space left on device")
        super().interval(result)


def test_a_failing_sink_is_said_once_and_never_stops_scoring_or_the_other_sinks(ae_bundle,
                                                                               tmp_path):
    cfg = load_config(write_agent_config(
        tmp_path / "agent.toml", agent={"node": "n", "machine": "fan"},
        model={"bundle": ae_bundle, "artifact": "onnx-int8"},
        decision={"interval_s": 2.0, "threshold": 1e9}, output={"stdout": False, "stats_s": 1}))
    bundle, pipeline = build(cfg)
    pipeline.seq = 41
    good, broken, out = MemorySink(), BrokenSink(), io.StringIO()
    lines = JsonLinesSink(stream=out, node="n", machine="fan")
    source = ToneSource(bundle.spec.sample_rate, 5.0)
    runner = Runner(cfg, [Listener(source, [Machine(cfg, bundle, pipeline,
                                                    [broken, good, lines])])])
    assert runner.run() == 0
    assert [r.seq for r in good.results] == [41, 42, 43, 44]          # scoring went on
    records = [json.loads(ln) for ln in out.getvalue().splitlines()]
    failed = [r for r in records if r.get("status") == "sink_failed"]
    assert len(failed) == 1 and failed[0]["sink"] == "test-broken"        # said once
    assert "No space left on device" in failed[0]["error"]
    assert [r["seq"] for r in records if r["kind"] == "score"] == [41, 42, 43, 44]
    assert records[-1]["status"] == "stopped" and broken.closed


def test_the_real_agent_on_a_full_disk_reports_retries_and_recovers(ae_bundle, wav, tmp_path):
    with tmpfs(tmp_path / "disk", "256k") as disk:
        cfg = write_agent_config(
            tmp_path / "agent.toml", agent={"node": "n1", "machine": "fan",
                                            "state_dir": tmp_path / "state"},
            model={"bundle": ae_bundle, "artifact": "onnx-int8"},
            audio={"source": "file", "file": wav, "realtime": True, "loop": True},
            decision={"interval_s": 1, "threshold": 1e9},
            output={"stdout": True, "file": disk / "scores.jsonl", "stats_s": 1})
        proc = subprocess.Popen([sys.executable, "-m", "harken.agent.cli", "run", "--config",
                                 str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        out = collect_lines(proc.stdout)

        def records():
            return [json.loads(ln) for ln in list(out)]
        try:
            wait_for("a score", lambda: any(r["kind"] == "score" for r in records()), 120)
            filler = fill(disk)
            wait_for("sink_failed", lambda: any(r.get("status") == "sink_failed"
                                                for r in records()), 60)
            failed_at = max(r["seq"] for r in records() if r["kind"] == "score")
            wait_for("scores go on", lambda: max(r["seq"] for r in records()
                                                 if r["kind"] == "score") >= failed_at + 2, 60)
            wait_for("file_errors in the stats", lambda: any(
                r.get("status") == "stats" and r.get("file_errors", 0) > 0 and
                r.get("file_pending", 0) > 0 for r in records()), 60)
            filler.unlink()
            wait_for("sink_restored", lambda: any(r.get("status") == "sink_restored"
                                                  for r in records()), 60)
        finally:
            proc.terminate()
            proc.wait(60)
        assert proc.returncode == 0
        assert sum(r.get("status") == "sink_failed" for r in records()) == 1
        in_file = [r["seq"] for r in whole_lines(disk / "scores.jsonl") if r["kind"] == "score"]
        on_stdout = [r["seq"] for r in records() if r["kind"] == "score"]
        assert in_file == on_stdout                 # held through the full disk, none lost


def test_stdout_closed_by_its_reader_is_said_once_and_the_file_goes_on(ae_bundle, wav, tmp_path):
    cfg = write_agent_config(
        tmp_path / "agent.toml", agent={"node": "n1", "machine": "fan",
                                        "state_dir": tmp_path / "state"},
        model={"bundle": ae_bundle, "artifact": "onnx-int8"},
        audio={"source": "file", "file": wav, "realtime": False},
        decision={"interval_s": 2, "threshold": 1e9},
        output={"stdout": True, "file": tmp_path / "scores.jsonl"})
    # stdout buffered, as a user's shell has it: PYTHONUNBUFFERED (set by some dev shells and
    # CI images) would hide the flush at exit into the closed pipe (exit 120)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen([sys.executable, "-m", "harken.agent.cli", "run", "--config",
                             str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    proc.stdout.close()                           # `harken run ... | head -0`
    err = proc.stderr.read()
    assert proc.wait(120) == 0, err
    records = whole_lines(tmp_path / "scores.jsonl")
    assert [r["seq"] for r in records if r["kind"] == "score"] == [1, 2, 3, 4, 5]
    failed = [r for r in records if r.get("status") == "sink_failed"]
    assert len(failed) == 1 and "stdout" in failed[0]["error"]
    assert "Traceback" not in err


def test_two_machines_sharing_one_output_file_write_whole_lines(ae_bundle, wav, tmp_path):
    cfg = write_agent_config(
        tmp_path / "agent.toml", agent={"node": "n1", "state_dir": tmp_path / "state"},
        model={"bundle": ae_bundle, "artifact": "onnx-int8"},
        audio={"source": "file", "file": wav, "realtime": False},
        decision={"interval_s": 0.5, "threshold": 1e9},
        output={"stdout": False, "file": tmp_path / "scores.jsonl"},
        machines=[{"name": "a"}, {"name": "b", "audio": {"file": str(wav)}}])
    out = subprocess.run([sys.executable, "-m", "harken.agent.cli", "run", "--config",
                          str(cfg)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    records = whole_lines(tmp_path / "scores.jsonl")
    for name in ("a", "b"):
        mine = [r["seq"] for r in records if r["kind"] == "score" and r["machine"] == name]
        assert mine == list(range(1, len(mine) + 1)) and len(mine) >= 19


def test_a_stats_period_of_a_tenth_of_a_millisecond_is_refused_naming_the_key(tmp_path):
    cfg = write_agent_config(tmp_path / "agent.toml", model={"bundle": "b"},
                             output={"stats_s": 0.0001})
    out = subprocess.run([sys.executable, "-m", "harken.agent.cli", "run", "--config",
                          str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "output.stats_s" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
