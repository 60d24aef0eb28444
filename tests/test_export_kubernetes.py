"""Exported Kubernetes objects: valid against the Kubernetes schemas (offline, strict,
pinned version), and meaning what fleet.yaml says."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from fleet.export.base import ExportError
from fleet.export.kubernetes import KubernetesTarget
from fleet.spec.load import load_manifest, parse_manifest
from fleet.spec.secrets import secret_value

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[test]'")

# The Kubernetes version the objects are validated against; kubernetes-validate bundles its schemas.
KUBERNETES_VERSION = "1.34"
MANIFEST = Path(__file__).resolve().parent / "golden" / "export" / "fleet.yaml"

EDGE_MANIFEST = """
version: 1
name: edge_fleet
hermes: {home: /srv/hermes}
profiles:
  default: {}
  a-very-long-profile-name-that-is-exactly-sixty-four-characters-_:
    env: {SOME_PASSWORD: hunter2, PLAIN: "yes"}
  odd:
    drain: {timeout: 0}
    health: {heartbeat_stale: 2.5s, startup_grace: 0}
"""


def objects(export) -> dict[str, list[dict]]:
    return {f.path: [d for d in yaml.safe_load_all(f.text) if d] for f in export.files}


def all_exports():
    golden = load_manifest(MANIFEST).spec
    edge = parse_manifest(EDGE_MANIFEST, "edge.yaml", "/srv").spec
    yield "golden", KubernetesTarget().render(golden)
    yield "golden-options", KubernetesTarget(image="registry.example.com/team/hermes-agent:0.19.0", image_given=True,
                                             namespace="bots", storage_size="5Gi",
                                             storage_class="fast-ssd").render(golden)
    yield "edge", KubernetesTarget().render(edge)


@pytest.mark.parametrize("name,export", list(all_exports()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_object_validates_against_the_kubernetes_schemas(name, export):
    validated = 0
    for docs in objects(export).values():
        for doc in docs:
            if doc["kind"] == "Kustomization":
                continue
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            validated += 1
    assert validated >= 5


def test_the_validator_rejects_what_it_should():
    """The test above can fail: an unknown field or a wrong type is an error."""
    export = KubernetesTarget().render(load_manifest(MANIFEST).spec)
    deployment = objects(export)["alpha.yaml"][-1]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    claim = objects(export)["alpha.yaml"][1]
    claim["spec"]["accessModes"] = "ReadWriteOnce"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(claim, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_file_and_the_stream_holds_the_same_objects():
    export = KubernetesTarget(namespace="bots").render(load_manifest(MANIFEST).spec)
    by_file = objects(export)
    [kustomization] = by_file.pop("kustomization.yaml")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["resources"] == sorted(by_file) and kustomization["namespace"] == "bots"
    streamed = [d for d in yaml.safe_load_all(export.stream) if d]
    assert streamed == [d for docs in by_file.values() for d in docs]
    assert all(d["metadata"]["namespace"] == "bots" for d in streamed)


def test_objects_keep_the_semantics_of_fleet_yaml():
    by_file = objects(KubernetesTarget().render(load_manifest(MANIFEST).spec))
    config_map, claim, deployment = by_file["alpha.yaml"]
    assert (config_map["kind"], claim["kind"], deployment["kind"]) == ("ConfigMap", "PersistentVolumeClaim",
                                                                       "Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    # One gateway per profile at a time.
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pod["volumes"] == [{"name": "hermes-home", "persistentVolumeClaim": {"claimName": "demo-alpha-home"}}]
    assert container["volumeMounts"] == [{"name": "hermes-home", "mountPath": "/opt/data/profiles/alpha"}]
    # Labels: standard, and the selector matches the pod template.
    labels = deployment["metadata"]["labels"]
    assert labels == {"app.kubernetes.io/name": "hermes-gateway", "app.kubernetes.io/instance": "alpha",
                      "app.kubernetes.io/part-of": "demo", "app.kubernetes.io/managed-by": "hermes-fleet"}
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert config_map["metadata"]["labels"] == claim["metadata"]["labels"] == labels
    # Graceful drain before kill; liveness by heartbeat.
    assert pod["terminationGracePeriodSeconds"] == 60 + 30
    prestop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop[:2] == ["/bin/sh", "-c"] and ".drain_request.json" in prestop[2]
    assert ".gateway-planned-stop.json" in prestop[2] and prestop[4:] == ["/opt/data/profiles/alpha", "60",
                                                                         "hermes-fleet:kubernetes-prestop", "auto", "30"]
    probe = container["livenessProbe"]
    assert probe["exec"]["command"][4:] == ["/opt/data/profiles/alpha/state/gateway.heartbeat", "90"]
    assert probe["initialDelaySeconds"] == 60 and probe["failureThreshold"] == 1
    # The command, env, proxies and secrets.
    assert container["command"] == ["hermes", "-p", "alpha", "gateway", "run", "--external-supervisor"]
    data = config_map["data"]
    assert data["HERMES_HOME"] == "/opt/data" and data["HERMES_GATEWAY_EXTERNAL_SUPERVISOR"] == "1"
    assert data["NO_PROXY"].startswith("127.0.0.1,localhost,::1") and data["no_proxy"] == data["NO_PROXY"]
    assert data["HTTPS_PROXY"] == "http://proxy.internal:3128"
    secrets = ["DB_PASSWD", "ERROR_REPORTING_URL", "NOTIFY_URL", "SERVICE_ACCOUNT_CREDENTIAL", "TELEGRAM_BOT_TOKEN",
               "UPSTREAM_HEADER"]  # by name, and by value (a DSN with a key, a webhook URL, a bearer header)
    assert not set(secrets) & set(data) and data["HERMES_LOG_LEVEL"] == "info"
    assert container["envFrom"] == [{"configMapRef": {"name": "demo-alpha-env"}}]
    assert container["env"] == [{"name": key, "valueFrom": {"secretKeyRef": {"name": "demo-alpha-secrets", "key": key}}}
                                for key in secrets]
    assert not any(d["kind"] == "Secret" for docs in by_file.values() for d in docs)
    # Removing a profile never deletes its home.
    assert claim["metadata"]["annotations"]["kustomize.toolkit.fluxcd.io/prune"] == "disabled"

    beta = by_file["beta_two.yaml"][-1]
    assert beta["spec"]["replicas"] == 0  # desired: stopped
    assert beta["metadata"]["name"] == "demo-beta-two"
    assert beta["metadata"]["annotations"]["argocd.argoproj.io/sync-options"] == "Prune=false"  # prune: false
    assert beta["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120 + 30

    worker_map, worker = by_file["worker.yaml"]
    [worker_container] = worker["spec"]["template"]["spec"]["containers"]
    # The secret word of the command is a reference to the Secret, expanded by the kubelet.
    assert worker_container["command"][5:] == ["/usr/bin/python3", "-m", "worker_bot", "--verbose", "--api-token",
                                               "$(HERMES_FLEET_SECRET_ARG_5)"]
    assert worker_container["workingDir"] == "/srv/worker"
    assert worker_map["data"]["HERMES_FLEET_STOP_FILE"] == "/run/hermes-fleet/stop"
    assert {e["name"] for e in worker_container["env"]} >= {"OPENAI_API_KEY", "HTTPS_PROXY", "https_proxy",
                                                            "HERMES_FLEET_SECRET_ARG_5"}


def test_edge_names_defaults_and_zero_durations():
    by_file = objects(KubernetesTarget().render(parse_manifest(EDGE_MANIFEST, "e.yaml", "/srv").spec))
    default = by_file["default.yaml"][-1]
    [container] = default["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["hermes", "gateway", "run", "--external-supervisor"]  # never -p default
    assert container["volumeMounts"][0]["mountPath"] == "/opt/data"
    long_name = "a-very-long-profile-name-that-is-exactly-sixty-four-characters-_"
    long = by_file[f"{long_name}.yaml"][-1]
    assert long["metadata"]["name"] == "edge-fleet-a-very-long-profile-name-that-is-exactly-sixty-four-characters"
    instance = long["metadata"]["labels"]["app.kubernetes.io/instance"]
    assert len(instance) <= 63 and instance[-1].isalnum()
    assert long["metadata"]["annotations"]["hermes-fleet/profile"] == long_name
    odd = by_file["odd.yaml"][-1]["spec"]["template"]["spec"]
    assert odd["terminationGracePeriodSeconds"] == 30
    assert odd["containers"][0]["livenessProbe"]["exec"]["command"][-1] == "3"
    assert odd["containers"][0]["livenessProbe"]["initialDelaySeconds"] == 0


def test_a_changed_env_changes_the_pod_template():
    base = "version: 1\nprofiles: {p: {env: {A: '1'}}}\n"
    changed = "version: 1\nprofiles: {p: {env: {A: '2'}}}\n"

    def template_annotations(text):
        export = KubernetesTarget().render(parse_manifest(text, "f.yaml", "/srv").spec)
        return objects(export)["p.yaml"][-1]["spec"]["template"]["metadata"]["annotations"]

    assert template_annotations(base)["hermes-fleet/env-hash"] != template_annotations(changed)["hermes-fleet/env-hash"]


@settings(max_examples=60, deadline=None)
@given(value=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"),
                     max_size=40))
@example(value="a\x85b")  # NEL: PyYAML folds it into a space unless double-quoted
def test_config_map_values_round_trip(value):
    assume(not secret_value(value))  # a secret-looking value goes to the Secret instead
    doc = {"version": 1, "profiles": {"p": {"env": {"V": value}}}}
    spec = parse_manifest(yaml.safe_dump(doc), "f.yaml", "/srv").spec
    config_map = objects(KubernetesTarget().render(spec))["p.yaml"][0]
    assert config_map["data"]["V"] == value


SHARED_SECRETS = """
version: 1
name: team
profiles:
  a: {env: {DB_PASSWD: one-value, LOG: info}}
  b: {env: {DB_PASSWD: %s}}
"""


def secret_refs(export) -> dict[str, set[str]]:
    refs: dict[str, set[str]] = {}
    for name, docs in objects(export).items():
        for doc in docs:
            if doc.get("kind") == "Deployment":
                for env in doc["spec"]["template"]["spec"]["containers"][0].get("env", []):
                    ref = env["valueFrom"]["secretKeyRef"]
                    refs.setdefault(ref["name"], set()).add(f"{name}:{ref['key']}")
    return refs


def test_secret_name_option_points_every_profile_at_the_users_secret():
    spec = parse_manifest(SHARED_SECRETS % "one-value", "f.yaml", "/srv").spec
    assert secret_refs(KubernetesTarget().render(spec)) == {"team-a-secrets": {"a.yaml:DB_PASSWD"},
                                                           "team-b-secrets": {"b.yaml:DB_PASSWD"}}
    shared = KubernetesTarget(secret_name="bots-external").render(spec)
    assert secret_refs(shared) == {"bots-external": {"a.yaml:DB_PASSWD", "b.yaml:DB_PASSWD"}}
    assert "kubectl create secret generic bots-external" in shared.stream
    assert not any(d["kind"] == "Secret" for docs in objects(shared).values() for d in docs)
    per_profile = KubernetesTarget(secret_name="vault-{profile}").render(spec)
    assert secret_refs(per_profile) == {"vault-team-a": {"a.yaml:DB_PASSWD"}, "vault-team-b": {"b.yaml:DB_PASSWD"}}


def test_a_shared_secret_cannot_hold_two_values_for_one_key():
    spec = parse_manifest(SHARED_SECRETS % "other-value", "f.yaml", "/srv").spec
    with pytest.raises(ExportError) as err:
        KubernetesTarget(secret_name="bots-external").render(spec)
    assert "DB_PASSWD" in str(err.value) and "{profile}" in str(err.value)
    assert "one-value" not in str(err.value) and "other-value" not in str(err.value)
    KubernetesTarget(secret_name="{profile}-env-secrets").render(spec)  # one Secret per profile: fine
    with pytest.raises(ExportError, match="not a valid Secret name"):
        KubernetesTarget(secret_name="Bad_Name")
