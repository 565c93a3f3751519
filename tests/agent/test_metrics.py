"""The Prometheus endpoint (agent/sinks/metrics.py, docs/deploy.md "Prometheus"): a real
``harken run`` serves its machines' scores, a real Prometheus scrapes it with the docs'
scrape config, bad settings are refused in one line, and the module loads without
``prometheus_client`` (the device-only install)."""

import importlib.util
import json
import math
import re
import shutil
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from harken.agent.config import parse_config
from harken.common.errors import ConfigError, EnvironmentFailure
from harken.testkit.files import write_agent_config
from harken.testkit.mosquitto import free_port
from tests.helpers import collect_lines, wait_for

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
# the device-only install (scripts/setup --device --tests) has neither the `metrics` extra nor
# Prometheus; the workstation setup installs both
needs_client = pytest.mark.skipif(importlib.util.find_spec("prometheus_client") is None,
                                  reason="no prometheus_client (the metrics extra) here")
needs_prometheus = pytest.mark.skipif(not Path(PROMETHEUS).exists(),
                                      reason="no prometheus binary here (Debian's prometheus)")
SAMPLE = re.compile(r'^harken_score\{machine="(?P<m>[^"]+)",node="(?P<n>[^"]+)"\} (?P<v>\S+)$', re.M)


def page(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def scores(port: int) -> dict[str, float]:
    try:
        return {m["m"]: float(m["v"]) for m in SAMPLE.finditer(page(port))}
    except OSError:
        return {}


def scrape_config(port: int) -> str:
    """The docs' block, with the test's target and a 1 s interval."""
    doc = (ROOT / "docs" / "deploy.md").read_text()
    block = doc.split("<!-- prometheus-scrape: start -->")[1].split("<!-- prometheus-scrape: end -->")[0]
    yaml = block.split("```yaml")[1].split("```")[0]
    assert '"127.0.0.1:9108"' in yaml and "scrape_interval: 15s" in yaml
    return yaml.replace("127.0.0.1:9108", f"127.0.0.1:{port}").replace("15s", "1s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def agent(ae_bundle, wav, tmp_path):
    """``harken run`` of two machines on one looping file, metrics on a free port."""
    port = free_port()
    cfg = write_agent_config(
        tmp_path / "agent.toml", agent={"node": "n1", "state_dir": tmp_path / "state"},
        model={"bundle": ae_bundle, "artifact": "onnx-int8"},
        audio={"source": "file", "file": wav, "realtime": True, "loop": True},
        decision={"interval_s": 1, "threshold": 1e9}, output={"stdout": True, "stats_s": 1},
        metrics={"listen": f"127.0.0.1:{port}"},
        machines=[{"name": "fan"}, {"name": "pump"}])
    proc = subprocess.Popen([sys.executable, "-m", "harken.agent.cli", "run", "--config",
                             str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = collect_lines(proc.stdout)
    try:
        yield port, lines, proc
    finally:
        stop(proc)


@needs_client
@needs_prometheus
def test_a_running_agent_serves_each_machines_score_and_a_real_prometheus_scrapes_it(
        agent, tmp_path):
    port, lines, proc = agent
    wait_for("a score of both machines on stdout", lambda: {"fan", "pump"} <= {
        json.loads(ln)["machine"] for ln in list(lines) if '"kind": "score"' in ln}, 120)
    # one endpoint carries both machines, with the score the JSON lines gave
    wait_for("both scores on /metrics", lambda: {"fan", "pump"} <= set(scores(port)), 30)
    got = scores(port)
    assert all(math.isfinite(v) and v > 0 for v in got.values()), got
    text = page(port)
    assert re.search(r'^harken_threshold\{machine="fan",node="n1"\} 1(\.0)?e\+09$', text, re.M)
    assert re.search(r'^harken_anomaly\{machine="pump",node="n1"\} 0\.0$', text, re.M)
    assert re.search(r'^harken_intervals_total\{machine="fan",node="n1",status="\w+"\} [1-9]',
                     text, re.M)
    assert re.search(r"^process_resident_memory_bytes [1-9]", text, re.M)
    wait_for("the stats record's CPU figure", lambda: re.search(
        r'^harken_process_cpu_percent\{node="n1"\} ', page(port), re.M), 30)

    # a real Prometheus scraping it with the docs' scrape config
    api = free_port()
    (tmp_path / "prometheus.yml").write_text(scrape_config(port))
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{api}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    query = urllib.parse.urlencode({"query": 'harken_score{node="n1",machine="fan"}'})
    found: list = []

    def series() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{api}/api/v1/query?{query}",
                                        timeout=5) as r:
                body = json.load(r)
        except OSError:
            assert prom.poll() is None, prom.stderr.read()[-2000:]
            return False
        found[:] = body["data"]["result"]
        return bool(found)
    try:
        wait_for("a harken_score series in Prometheus", series, 60)
    finally:
        stop(prom)
    assert found[0]["metric"]["machine"] == "fan" and found[0]["metric"]["job"] == "harken"
    assert float(found[0]["value"][1]) > 0
    stop(proc)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]


def config(listen):
    return parse_config({"agent": {"node": "n1", "machine": "fan"}, "model": {"bundle": "b"},
                         "metrics": {"listen": listen}})


@pytest.mark.parametrize("listen, why", [
    ("127.0.0.1:0", "the port must be a number from 1 to 65535"),
    ("127.0.0.1:http", "the port must be a number"),
    ("::1:9108", "an IPv6 address goes in brackets"),
    (":9108", "no host before ':'"),
    ("host name:9108", "character ' ' at position 5 is not allowed"),
    (9108, "expected text"),
])
def test_bad_listen_values_are_refused_in_one_line_naming_the_key(listen, why):
    with pytest.raises(ConfigError) as err:
        config(listen)
    msg = str(err.value)
    assert "key 'metrics.listen'" in msg and why in msg and "\n" not in msg


@needs_client
def test_metrics_are_off_without_listen_and_a_port_in_use_is_one_line():
    from harken.agent.sinks.metrics import MetricsSink
    off = parse_config({"agent": {"node": "n1"}, "model": {"bundle": "b"}})
    assert not MetricsSink.enabled(off)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(EnvironmentFailure) as err:
            MetricsSink.from_config(config(f"127.0.0.1:{s.getsockname()[1]}"))
    assert str(err.value).startswith("metrics.listen: cannot listen on 127.0.0.1:")
    assert "\n" not in str(err.value)
    # two machines of one process share one server; the last close frees the port
    port = free_port()
    a = MetricsSink.from_config(config(f"127.0.0.1:{port}"))
    b = MetricsSink.from_config(parse_config({"agent": {"node": "n1", "machine": "pump"},
                                              "model": {"bundle": "b"},
                                              "metrics": {"listen": f"127.0.0.1:{port}"}}))
    assert a.ep is b.ep
    a.close()
    assert "process_cpu_seconds_total" in page(port)    # still served for the other machine
    b.close()
    with pytest.raises(OSError):
        page(port)


def test_the_module_loads_without_prometheus_client_and_says_what_to_install():
    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "import harken.agent.sinks, harken.agent.runner\n"
            "from harken.agent.config import parse_config\n"
            "from harken.agent.sinks.metrics import MetricsSink\n"
            "c = parse_config({'agent': {'node': 'n'}, 'model': {'bundle': 'b'},"
            " 'metrics': {'listen': '127.0.0.1:9'}})\n"
            "try:\n    MetricsSink.from_config(c)\nexcept Exception as e:\n"
            "    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ("ConfigError metrics.listen: the Prometheus metrics need the "
                                  "prometheus_client package (pip install 'harken[metrics]')")
