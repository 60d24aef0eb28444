"""The monitoring examples (examples/monitoring), checked by the real promtool where it is installed.

- rules.yml passes `promtool check rules`, and its unit tests (rules_test.yml) pass `promtool test rules`;
  every alert has a case where it fires and one where it must not, and each of those cases is shown to
  fail when the alert misbehaves (a firing case expecting silence, a quiet case meeting an alert).
- Every alert has a `for`, a severity, a summary, a description and its runbook link.
- prometheus.yml passes `promtool check config`, its commented bearer-token block included.
- dashboard.json is a well-formed Grafana dashboard on the `${datasource}` variable, and every query in it
  parses (`promtool check rules`, each expr written as a recording rule).
- Every hermes_fleet_* name in the rules, their tests and the dashboard is in the controller's catalog.

The promtool tests skip without promtool (Debian/Ubuntu: `apt-get install prometheus`; .ci/run does).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from fleet.metrics import catalog

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "monitoring"
RUNBOOK = "https://github.com/hermes-fleet/hermes-fleet/blob/main/docs/observability.md#"
SEVERITIES = ("critical", "warning", "info")
JOB = "hermes-fleet"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PROMTOOL_TIMEOUT = 60

# The controller's own metric catalog: a rule or panel naming anything else would never match a series.
METRIC_NAMES = frozenset(catalog.METRIC_NAMES)
HISTOGRAMS = frozenset(f.full_name for f in catalog.FAMILIES if f.type == "histogram")

# A metric name of ours; a name followed or preceded by ':' is a recording rule's (hermes_fleet:...), not ours.
NAME = re.compile(r"(?<![\w:])(hermes_fleet_[a-z0-9_]+)(?![\w:])")
# Grafana's variables, as a query to check them with: a range for the intervals, any value for ours.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "5m", "$__range": "1h",
                     "$profile": ".*", "$instance": ".*"}


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian/Ubuntu: apt-get install prometheus)")
    return path


def run(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT)


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def load_yaml(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))


def alerts(rules: dict) -> dict[str, dict]:
    return {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule}


def all_rules(rules: dict) -> list[dict]:
    return [rule for group in rules["groups"] for rule in group["rules"]]


def alert_cases(tests: dict) -> list[tuple[str, bool]]:
    """(alertname, fires) for every alert_rule_test entry: fires when it expects an alert."""
    return [(case["alertname"], bool(case.get("exp_alerts")))
            for group in tests["tests"] for case in group.get("alert_rule_test", [])]


def missing_fields(rule: dict) -> list[str]:
    """What an alert lacks of what every alert here must have."""
    labels, notes = rule.get("labels") or {}, rule.get("annotations") or {}
    missing = []
    if not re.fullmatch(r"\d+[smhd]", str(rule.get("for", ""))):
        missing.append("for")
    if labels.get("severity") not in SEVERITIES:
        missing.append("labels.severity")
    missing += [f"annotations.{key}" for key in ("summary", "description") if not notes.get(key)]
    if "$labels." not in notes.get("description", ""):
        missing.append("annotations.description naming $labels")
    if notes.get("runbook_url") != RUNBOOK + rule["alert"].lower():
        missing.append("annotations.runbook_url")
    return missing


def names_in(text: str) -> set[str]:
    """The metric names in PromQL (or a series selector), leaving out strings: label values are no names."""
    return set(NAME.findall(re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)))


def unknown_names(names: set[str]) -> set[str]:
    def known(name: str) -> bool:
        if name in METRIC_NAMES:
            return True
        base, _, suffix = name.rpartition("_")
        return suffix in ("bucket", "sum", "count") and base in HISTOGRAMS
    return {name for name in names if not known(name)}


# ---------------------------------------------------------------- the rules


def test_promtool_accepts_the_rules(promtool):
    result = run(promtool, "check", "rules", "rules.yml", cwd=EXAMPLES)
    assert result.returncode == 0, output(result)
    # It read every rule, not an empty file.
    assert f"SUCCESS: {len(all_rules(load_yaml('rules.yml')))} rules found" in output(result), output(result)


def test_the_rule_unit_tests_pass(promtool):
    result = run(promtool, "test", "rules", "rules_test.yml", cwd=EXAMPLES)
    assert result.returncode == 0, output(result)
    assert "SUCCESS" in output(result), output(result)


def test_every_alert_has_a_firing_and_a_quiet_case():
    names = set(alerts(load_yaml("rules.yml")))
    cases = alert_cases(load_yaml("rules_test.yml"))
    assert names, "no alerts in rules.yml"
    firing = {name for name, fires in cases if fires}
    quiet = {name for name, fires in cases if not fires}
    assert not names - firing, f"no test where these fire: {sorted(names - firing)}"
    assert not names - quiet, f"no test where these must not fire: {sorted(names - quiet)}"
    # A case naming no alert of rules.yml passes whatever it expects: a typo is a silent hole.
    assert not {name for name, _ in cases} - names, "cases of alerts rules.yml does not have"


def test_every_alert_has_for_severity_summary_description_and_runbook():
    found = {name: missing_fields(rule) for name, rule in alerts(load_yaml("rules.yml")).items()}
    assert {name: missing for name, missing in found.items() if missing} == {}


def test_the_field_check_sees_a_bare_alert():
    bare = {"alert": "HermesFleetX", "expr": "vector(1)", "labels": {"severity": "page"},
            "annotations": {"summary": "x", "description": "no labels",
                            "runbook_url": RUNBOOK + "HermesFleetX"}}
    assert missing_fields(bare) == ["for", "labels.severity", "annotations.description naming $labels",
                                    "annotations.runbook_url"]


def _cases(tests: dict, fires: bool) -> tuple[dict, Counter]:
    """rules_test.yml cut down to its firing (or quiet) alert cases; and how many each alert has."""
    groups, counts = [], Counter()
    for group in tests["tests"]:
        kept = [case for case in group.get("alert_rule_test", []) if bool(case.get("exp_alerts")) == fires]
        if kept:
            trimmed = {key: value for key, value in group.items() if key != "promql_expr_test"}
            groups.append(dict(trimmed, alert_rule_test=kept))
            counts.update(case["alertname"] for case in kept)
    return dict(tests, tests=groups), counts


def _write(path: Path, doc: dict) -> None:
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


def _failed_cases(result: subprocess.CompletedProcess, names) -> Counter:
    text = output(result)
    return Counter({name: text.count(f"alertname: {name}, time:") for name in names})


def test_every_case_fails_when_its_alert_misbehaves(promtool, tmp_path):
    """Every firing case fails once it expects silence, and every quiet case fails once its alert fires
    there (made to fire always, at once): no case passes whatever its rule does."""
    tests, rules = load_yaml("rules_test.yml"), load_yaml("rules.yml")
    names = sorted(alerts(rules))

    firing, expected = _cases(tests, fires=True)
    for group in firing["tests"]:
        for case in group["alert_rule_test"]:
            case["exp_alerts"] = []
    shutil.copy(EXAMPLES / "rules.yml", tmp_path / "rules.yml")
    _write(tmp_path / "firing.yml", firing)
    result = run(promtool, "test", "rules", "firing.yml", cwd=tmp_path)
    assert result.returncode != 0 and _failed_cases(result, names) == expected, output(result)

    # Each group against rules where only the alerts it checks fire always: every alert firing at each
    # evaluation of every group takes twice as long.
    quiet, expected = _cases(tests, fires=False)
    files = []
    for i, group in enumerate(quiet["tests"]):
        mutated = load_yaml("rules.yml")
        for name, rule in alerts(mutated).items():
            if name in {case["alertname"] for case in group["alert_rule_test"]}:
                rule["expr"], rule["for"] = f"({rule['expr']}) or vector(1)", "0s"
        _write(tmp_path / f"rules{i}.yml", mutated)
        _write(tmp_path / f"quiet{i}.yml", dict(quiet, rule_files=[f"rules{i}.yml"], tests=[group]))
        files.append(f"quiet{i}.yml")
    result = run(promtool, "test", "rules", *files, cwd=tmp_path)
    assert result.returncode != 0 and _failed_cases(result, names) == expected, output(result)


def test_the_job_name_is_the_one_the_rules_and_the_dashboard_select():
    config = load_yaml("prometheus.yml")
    assert [job["job_name"] for job in config["scrape_configs"]] == [JOB]
    assert f'up{{job="{JOB}"}}' in alerts(load_yaml("rules.yml"))["HermesFleetControllerDown"]["expr"]
    up_queries = [expr for _, expr in dashboard_exprs(load_dashboard()) if re.search(r"(?<![\w:])up\{", expr)]
    assert up_queries and all(f'job="{JOB}"' in expr for expr in up_queries), up_queries


# ---------------------------------------------------------------- prometheus.yml


def _uncomment_token_block(text: str, token_file: Path) -> str:
    """The commented `authorization:` block of the hermes-fleet job, as a user turns it on."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "# authorization:")
    for i in range(start, start + 3):
        lines[i] = lines[i].replace("# ", "", 1)
    lines[start + 2] = re.sub(r"credentials_file: .*", f"credentials_file: {token_file}", lines[start + 2])
    return "\n".join(lines) + "\n"


def test_promtool_accepts_the_prometheus_config(promtool, tmp_path):
    shutil.copy(EXAMPLES / "prometheus.yml", tmp_path)
    shutil.copy(EXAMPLES / "rules.yml", tmp_path)
    result = run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, output(result)
    assert "SUCCESS: 1 rule files found" in output(result), output(result)  # it loads rules.yml
    config = load_yaml("prometheus.yml")
    assert config["scrape_configs"][0]["static_configs"] == [{"targets": ["127.0.0.1:9464"]}]
    assert "authorization" not in config["scrape_configs"][0]  # commented out: on only with a token


def test_the_commented_token_block_is_valid_once_uncommented(promtool, tmp_path):
    shutil.copy(EXAMPLES / "rules.yml", tmp_path)
    token = tmp_path / "hermes-fleet.token"
    token.write_text("s3cret\n", encoding="utf-8")
    config = tmp_path / "prometheus.yml"
    config.write_text(_uncomment_token_block((EXAMPLES / "prometheus.yml").read_text(encoding="utf-8"), token),
                      encoding="utf-8")
    job = yaml.safe_load(config.read_text(encoding="utf-8"))["scrape_configs"][0]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": str(token)}
    result = run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, output(result)
    token.unlink()  # promtool reads the block: a missing token file fails the check
    result = run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode != 0 and "hermes-fleet.token" in output(result), output(result)


# ---------------------------------------------------------------- dashboard.json


def load_dashboard() -> dict:
    return json.loads((EXAMPLES / "dashboard.json").read_text(encoding="utf-8"))


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(name, PromQL) of every panel query, and of every query variable (label_values' selector)."""
    found = [(f"panel{panel['id']}_{target['refId']}", target["expr"])
             for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert match, f"variable {var['name']}: not label_values(selector, label): {query}"
            found.append((f"variable_{var['name']}", match.group(1)))
    return found


def as_checkable(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def check_as_rules(promtool: str, tmp_path: Path, exprs: list[tuple[str, str]]) -> subprocess.CompletedProcess:
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:{name}", "expr": as_checkable(expr)}
                                                        for name, expr in exprs]}]}
    _write(tmp_path / "dashboard_rules.yml", rules)
    return run(promtool, "check", "rules", "dashboard_rules.yml", cwd=tmp_path)


def test_the_dashboard_is_an_importable_grafana_dashboard():
    dashboard = load_dashboard()
    assert dashboard["title"] == "hermes-fleet"
    assert 8 <= len(dashboard["uid"]) <= 40
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 39
    assert {"time", "refresh", "templating", "annotations", "panels"} <= dashboard.keys()
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids), ids
    for panel in panels:
        assert panel["type"] in ("stat", "timeseries", "table"), panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)) and all(target["expr"].strip() for target in panel["targets"])


def test_every_panel_and_query_uses_the_datasource_variable():
    dashboard = load_dashboard()
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    wrong = [panel["title"] for panel in dashboard["panels"] if panel.get("datasource") != DATASOURCE]
    wrong += [f"{panel['title']}/{target['refId']}" for panel in dashboard["panels"]
              for target in panel["targets"] if target.get("datasource") != DATASOURCE]
    wrong += [name for name, var in variables.items() if var["type"] == "query" and var["datasource"] != DATASOURCE]
    assert wrong == []


def test_the_instance_and_profile_variables():
    variables = {var["name"]: var for var in load_dashboard()["templating"]["list"]}
    queries = dict(dashboard_exprs({"panels": [], "templating": {"list": list(variables.values())}}))
    assert queries["variable_instance"] == "hermes_fleet_build_info"
    assert queries["variable_profile"] == 'hermes_fleet_profile_up{instance=~"$instance"}'
    assert variables["profile"]["multi"] and variables["profile"]["includeAll"]
    # Per-profile panels follow both variables.
    exprs = dashboard_exprs(load_dashboard())
    per_profile = [expr for name, expr in exprs if name.startswith("panel") and "hermes_fleet_profile_" in expr]
    assert per_profile and all('profile=~"$profile"' in expr for expr in per_profile), per_profile
    assert all('instance=~"$instance"' in expr for name, expr in exprs if name.startswith("panel"))


def test_the_panels_fit_the_grid_without_overlapping():
    cells: dict[tuple[int, int], str] = {}
    for panel in load_dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_dashboard_query_parses(promtool, tmp_path):
    exprs = dashboard_exprs(load_dashboard())
    assert not [expr for _, expr in exprs if "$" in as_checkable(expr)], "a variable without a stand-in"
    result = check_as_rules(promtool, tmp_path, exprs)
    assert result.returncode == 0, output(result)
    assert f"SUCCESS: {len(exprs)} rules found" in output(result), output(result)


def test_the_query_check_catches_a_broken_query(promtool, tmp_path):
    exprs = dashboard_exprs(load_dashboard())
    name, expr = exprs[0]
    result = check_as_rules(promtool, tmp_path, [*exprs, ("broken", f"sum(({expr})")])
    assert result.returncode != 0 and "unclosed left parenthesis" in output(result), output(result)


# ---------------------------------------------------------------- the catalog


def test_every_metric_name_is_in_the_catalog():
    rules, tests = load_yaml("rules.yml"), load_yaml("rules_test.yml")
    used = {"rules.yml": set().union(*(names_in(rule["expr"]) for rule in all_rules(rules))),
            "rules_test.yml": set().union(*(names_in(series["series"]) for group in tests["tests"]
                                            for series in group["input_series"])),
            "dashboard.json": set().union(*(names_in(expr) for _, expr in dashboard_exprs(load_dashboard())))}
    assert all(used.values()), used  # the extraction finds names at all
    assert {source: unknown_names(names) for source, names in used.items() if unknown_names(names)} == {}


def test_the_name_check_sees_a_name_outside_the_catalog():
    expr = ('rate(hermes_fleet_reconcile_duration_seconds_bucket[5m]) + hermes_fleet:profile_heartbeat_age_seconds'
            ' + hermes_fleet_converged_bucket + on() hermes_fleet_profile_restart_total'
            ' + node_textfile_mtime_seconds{file=~".*hermes_fleet_main\\.prom", x="\\"hermes_fleet_y"}')
    assert names_in(expr) == {"hermes_fleet_reconcile_duration_seconds_bucket", "hermes_fleet_converged_bucket",
                              "hermes_fleet_profile_restart_total"}
    assert unknown_names(names_in(expr)) == {"hermes_fleet_converged_bucket", "hermes_fleet_profile_restart_total"}


def test_every_alert_has_its_runbook_section():
    doc = (EXAMPLES.parents[1] / "docs" / "observability.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^### (\w+)$", doc, flags=re.MULTILINE))
    names = set(alerts(load_yaml("rules.yml")))
    assert names and names <= headings, sorted(names - headings)
