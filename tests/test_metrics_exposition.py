"""The controller's Prometheus exposition, checked by the real tools: `promtool check metrics` (when installed)
and prometheus_client's parser, not by the code that wrote it."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from fleet.metrics import catalog
from fleet.metrics.exposition import escape_label, render
from fleet.metrics.model import FleetMetrics, Histogram, ProcessMetrics, ProfileMetrics, SourceMetrics

NOW = 1_800_000_000.0


def profile(name: str, **kw) -> ProfileMetrics:
    base = dict(name=name, up=True, desired_running=True, phase="Running", phase_since=NOW - 60, sync="Synced",
                restarts=0, consecutive_failures=0)
    return ProfileMetrics(**{**base, **kw})


def snapshot(profiles=(), **kw) -> FleetMetrics:
    base = dict(version="1.2.3", python_version="3.11.7", generation=4, digest="sha256:abc", commit="0123abcd",
                observed_generation=4, converged=True, reconciles=10,
                duration=Histogram(buckets=(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10), count=10, sum=0.42),
                last_reconcile_at=NOW, actions=(("spawn", 3), ("kill", 1)), action_errors=(("spawn", 1),),
                maintenance=(("waiting", 2),), maintenance_oldest_at=NOW - 600, store_degraded=False,
                profiles=tuple(profiles),
                source=SourceMetrics(sync="OutOfSync", failing=True, last_fetch_at=NOW - 30),
                process=ProcessMetrics(start_time=NOW - 3600, cpu_seconds=1.5, resident_bytes=25_000_000, open_fds=12))
    return FleetMetrics(**{**base, **kw})


FULL = snapshot([
    profile("executor", restarts=3, consecutive_failures=1, last_exit_code=-9, last_exit_at=NOW - 5,
            last_exit_class="killed", started_at=NOW - 4, heartbeat_at=NOW - 1, active_agents=2,
            actions=(("spawn", 4), ("kill", 1)), drain_deadline=NOW + 30),
    profile("advisor", up=False, phase="Backoff", sync="OutOfSync", consecutive_failures=5, last_exit_code=1,
            last_exit_at=NOW - 2, last_exit_class="crash"),
    profile("analyst", up=False, desired_running=False, phase="Stopped"),
])


def families(text: bytes) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def value(text: bytes, name: str, **labels) -> float:
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name}{labels}")


def test_every_family_of_the_catalog_appears_with_its_type_and_help():
    parsed = families(render(FULL))
    for family in catalog.FAMILIES:
        # the parser strips _total from counter family names, as OpenMetrics does
        name = family.full_name.removesuffix("_total") if family.type == "counter" else family.full_name
        assert name in parsed, family.full_name
        assert parsed[name].type == family.type
        assert parsed[name].documentation == family.help


def test_state_sets_hold_exactly_one_current_state_per_profile():
    text = render(FULL)
    for p in FULL.profiles:
        phases = {ph: value(text, "hermes_fleet_profile_phase", profile=p.name, phase=ph) for ph in catalog.PHASES}
        assert phases[p.phase] == 1 and sum(phases.values()) == 1
        syncs = [value(text, "hermes_fleet_profile_sync", profile=p.name, status=s) for s in catalog.SYNC_STATUSES]
        assert sorted(syncs) == [0, 0, 1]
    assert value(text, "hermes_fleet_profiles", phase="Running") == 1
    assert value(text, "hermes_fleet_profiles", phase="Backoff") == 1
    assert value(text, "hermes_fleet_profiles", phase="Failed") == 0  # zeros kept
    assert value(text, "hermes_fleet_profiles_desired_running") == 2
    assert value(text, "hermes_fleet_profiles_running") == 1


def test_counters_histogram_and_optional_series():
    text = render(FULL)
    assert value(text, "hermes_fleet_actions_total", kind="spawn") == 3
    assert value(text, "hermes_fleet_actions_total", kind="drain") == 0
    assert value(text, "hermes_fleet_action_errors_total", kind="spawn") == 1
    assert value(text, "hermes_fleet_profile_restarts_total", profile="executor") == 3
    assert value(text, "hermes_fleet_profile_actions_total", profile="executor", kind="kill") == 1
    assert value(text, "hermes_fleet_profile_last_exit_code", profile="executor") == -9
    assert value(text, "hermes_fleet_profile_last_exit_class", profile="advisor", **{"class": "crash"}) == 1
    assert value(text, "hermes_fleet_reconcile_duration_seconds_bucket", le="+Inf") == 10
    assert value(text, "hermes_fleet_reconcile_duration_seconds_bucket", le="0.001") == 1
    assert value(text, "hermes_fleet_reconcile_duration_seconds_count") == 10
    assert value(text, "hermes_fleet_maintenance_requests", state="waiting") == 2
    assert value(text, "hermes_fleet_source_sync", status="OutOfSync") == 1
    # absent, not zero, where there is no value: no exit yet, no gateway, no heartbeat
    assert b'hermes_fleet_profile_last_exit_code{profile="analyst"}' not in text
    assert b'hermes_fleet_profile_start_time_seconds{profile="advisor"}' not in text
    assert b'hermes_fleet_profile_active_agents{profile="advisor"}' not in text


def test_an_empty_quiet_fleet_leaves_out_what_does_not_exist():
    text = render(snapshot((), source=None, maintenance=(), maintenance_oldest_at=None, process=None))
    parsed = families(text)
    assert "hermes_fleet_source_sync" not in parsed and "hermes_fleet_maintenance_oldest_request_timestamp_seconds" \
        not in parsed and "process_resident_memory_bytes" not in parsed
    assert value(text, "hermes_fleet_maintenance_requests", state="pending") == 0
    assert b"hermes_fleet_profile_up" not in text  # no profile: no HELP/TYPE without samples either


def test_textfile_form_labels_every_series_with_the_fleet_and_leaves_out_process():
    text = render(FULL, constant_labels=(("fleet", "demo"),), textfile=True)
    parsed = families(text)
    assert not any(name.startswith("process_") for name in parsed)
    for family in parsed.values():
        for sample in family.samples:
            assert sample.labels.get("fleet") == "demo", sample


def test_no_sample_carries_a_timestamp_and_the_text_ends_with_a_newline():
    text = render(FULL)
    assert text.endswith(b"\n")
    for family in text_string_to_metric_families(text.decode()):
        assert all(s.timestamp is None for s in family.samples)


def test_an_unknown_state_is_shown_rather_than_lost():
    text = render(snapshot([profile("a", last_exit_class="brand_new_class", last_exit_code=3, last_exit_at=NOW)]))
    assert value(text, "hermes_fleet_profile_last_exit_class", profile="a", **{"class": "brand_new_class"}) == 1


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_any_label_value_round_trips_through_the_parser(raw):
    text = render(snapshot((), commit=raw, source=None, process=None))
    assert value(text, "hermes_fleet_generation_info") == 1
    parsed = [s for s in families(text)["hermes_fleet_generation_info"].samples]
    assert parsed[0].labels["commit"] == raw
    assert "\n" not in escape_label(raw)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
@pytest.mark.parametrize("form", ["http", "textfile"])
def test_promtool_finds_nothing_to_lint(form):
    text = render(FULL, constant_labels=(("fleet", "demo"),), textfile=True) if form == "textfile" else render(FULL)
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_does_flag_a_broken_exposition():
    """The check above can fail: the same tool rejects a counter without _total."""
    bad = render(FULL).replace(b"hermes_fleet_reconcile_total", b"hermes_fleet_reconciles")
    checked = subprocess.run(["promtool", "check", "metrics"], input=bad, capture_output=True, timeout=30)
    assert checked.returncode != 0


def test_the_documented_list_is_the_catalog():
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[1] / "docs" / "observability.md").read_text(encoding="utf-8")
    listed = doc.split("<!-- metrics:begin -->\n", 1)[1].split("<!-- metrics:end -->", 1)[0]
    assert listed == catalog.markdown(), "regenerate it: python -m fleet.metrics.catalog"
