"""A real controller running the demo fleet with metrics on: scraped over HTTP, written as a textfile, a
port that is taken, and a real Prometheus server finding a restart through its query API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleet_harness import fleet  # noqa: F401
from helpers import wait_until

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")

def metrics_state(fleet) -> dict:
    try:
        return json.loads((fleet.state / ".metrics.json").read_text())
    except (OSError, ValueError):
        return {}

def endpoint(fleet) -> str:
    listen = wait_until(lambda: metrics_state(fleet).get("listen"), timeout=15, what="the metrics listener")
    return f"http://{listen}"

def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}

def sample(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))

def test_a_controller_serves_its_fleet_and_writes_the_textfile(fleet):
    textfile = fleet.tmp / "node-exporter" / "hermes_fleet_test.prom"
    textfile.parent.mkdir()
    fleet.write_manifest({"alpha": {}, "beta": {}},
                         extra={"metrics": {"listen": "127.0.0.1:0", "textfile": str(textfile)}})
    fleet.apply()
    url = endpoint(fleet)

    def converged():
        s = scrape(url)
        return s if sample(s, "hermes_fleet_converged") == 1 else None

    samples = wait_until(converged, timeout=15, what="converged == 1 in the scrape")
    assert sample(samples, "hermes_fleet_profiles", phase="Running") == 2
    assert sample(samples, "hermes_fleet_profile_up", profile="alpha") == 1
    assert sample(samples, "hermes_fleet_profile_actions_total", profile="alpha", kind="spawn") == 1
    assert sample(samples, "hermes_fleet_desired_generation") == sample(samples, "hermes_fleet_observed_generation")
    shown = fleet.cli("status", with_file=False)
    assert f"metrics: {url}/metrics" in shown.stdout and f"metrics textfile: {textfile}" in shown.stdout
    assert fleet.status()["controller"]["metrics"]["listen"] == url.removeprefix("http://")

    pid = fleet.pid("alpha")
    fleet.kill9(pid)
    fleet.wait_running("alpha", other_than=pid)
    grown = wait_until(lambda: (s := scrape(url)) and (sample(s, "hermes_fleet_profile_restarts_total",
                                                               profile="alpha") or 0) >= 1 and s,
                       timeout=10, what="alpha's restart in the scrape")
    assert sample(grown, "hermes_fleet_profile_restarts_total", profile="beta") == 0  # the sibling untouched
    assert sample(grown, "hermes_fleet_profile_last_exit_class", profile="alpha", **{"class": "killed"}) == 1

    data = wait_until(lambda: textfile.exists() and textfile.read_bytes(), timeout=10, what="the textfile")
    assert oct(textfile.stat().st_mode & 0o777) == "0o644"
    assert b'hermes_fleet_profile_up{fleet="test",profile="alpha"}' in data
    assert b"process_" not in data
    if PROMTOOL:
        checked = subprocess.run([PROMTOOL, "check", "metrics"], input=data, capture_output=True, timeout=30)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not [p for p in os.listdir(textfile.parent) if p.endswith(".prom") and p != textfile.name]

def test_a_taken_port_is_reported_and_never_stops_the_fleet(fleet):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        fleet.write_manifest({"alpha": {}}, extra={"metrics": {"listen": f"127.0.0.1:{port}"}})
        fleet.apply()  # converges: the endpoint is not the fleet
        state = wait_until(lambda: metrics_state(fleet).get("listen_error") and metrics_state(fleet), timeout=10,
                           what="the listener's error in .metrics.json")
        assert "in use" in state["listen_error"] and str(port) in state["listen_error"]
        assert f"metrics: NOT SERVED — metrics on 127.0.0.1:{port}" in fleet.cli("status", with_file=False).stdout
        assert [e for e in fleet.journal() if e.kind == "metrics_error"]
        assert fleet.profiles()["alpha"]["phase"] == "Running"

        fleet.write_manifest({"alpha": {}}, extra={"metrics": {"listen": "127.0.0.1:0"}})
        fleet.apply()  # the controller moves its listener as the manifest says
        url = endpoint(fleet)
        assert sample(scrape(url), "hermes_fleet_profile_up", profile="alpha") == 1
        assert metrics_state(fleet)["listen_error"] == ""
    finally:
        taken.close()

def test_a_token_file_guards_the_endpoint(fleet):
    token = fleet.tmp / "metrics.token"
    token.write_text("tok-123\n")
    token.chmod(0o600)
    fleet.write_manifest({"alpha": {}}, extra={"metrics": {"listen": "127.0.0.1:0", "token_file": str(token)}})
    fleet.apply()
    url = endpoint(fleet)
    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(url)
    assert refused.value.code == 401
    request = urllib.request.Request(url + "/metrics", headers={"Authorization": "Bearer tok-123"})
    assert b"hermes_fleet_profile_up" in wait_until(lambda: urllib.request.urlopen(request, timeout=5).read(), 10)

def test_the_controller_loads_no_web_or_client_library():
    """Metrics on must not cost the controller prometheus_client, http.server, ssl or email (megabytes)."""
    code = ("import sys; import fleet.controller.__main__, fleet.controller.telemetry, fleet.metrics.server, "
            "fleet.metrics.exposition, fleet.controller.metrics_snapshot, psutil; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('prometheus_client', 'http', 'ssl', 'email', 'urllib3', 'asyncio', 'wsgiref')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"

@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus (Debian package prometheus) not installed")
def test_a_real_prometheus_sees_the_restart(fleet, tmp_path):
    fleet.write_manifest({"alpha": {}, "beta": {}}, extra={"metrics": {"listen": "127.0.0.1:0"}})
    fleet.apply()
    target = endpoint(fleet).removeprefix("http://")
    prom_port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: hermes-fleet\n    static_configs: [{{targets: ['{target}']}}]\n")
    with open(tmp_path / "prometheus.log", "wb") as log:
        prom = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        api = f"http://127.0.0.1:{prom_port}/api/v1/query?query="

        def query(expr: str) -> list:
            try:
                with urllib.request.urlopen(api + urllib.parse.quote(expr), timeout=5) as response:
                    return json.load(response)["data"]["result"]
            except OSError:
                return []

        # The discovery manager waits about 5 s before the first scrape.
        wait_until(lambda: query('up{job="hermes-fleet"} == 1'), timeout=30, what="prometheus scraping the fleet")
        wait_until(lambda: query('hermes_fleet_profile_up{profile="alpha"} == 1'), timeout=15)
        pid = fleet.pid("alpha")
        fleet.kill9(pid)
        fleet.wait_running("alpha", other_than=pid)
        found = wait_until(lambda: query("increase(hermes_fleet_profile_restarts_total[1m]) > 0"), timeout=30,
                           what="the restart in prometheus")
        assert [r["metric"]["profile"] for r in found] == ["alpha"]
        wait_until(lambda: query('hermes_fleet_profiles{phase="Running"} == 2'), timeout=15, what="both running")
    finally:
        prom.send_signal(signal.SIGTERM)
        try:
            prom.wait(timeout=15)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait(timeout=5)

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_symlinked_textfile_is_refused_and_said(fleet):
    target = fleet.tmp / "elsewhere.prom"
    link = fleet.tmp / "fleet.prom"
    link.symlink_to(target)
    fleet.write_manifest({"alpha": {}}, extra={"metrics": {"textfile": str(link)}})
    fleet.apply()
    state = wait_until(lambda: metrics_state(fleet).get("textfile_error") and metrics_state(fleet), timeout=10,
                       what="the textfile's error in .metrics.json")
    assert "symlink" in state["textfile_error"]
    assert not target.exists() and link.is_symlink()
