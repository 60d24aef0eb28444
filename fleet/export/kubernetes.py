"""fleet.yaml -> Kubernetes: per profile a ConfigMap, a PersistentVolumeClaim (Hermes
driver) and a one-replica Deployment with the Recreate strategy, plus kustomization.yaml.

Mapping (docs/scaling-out.md has the long form):
- one gateway per profile at a time: replicas 1 (0 when desired: stopped), strategy
  Recreate, and the profile's Hermes home on its own ReadWriteOnce volume;
- graceful drain before kill: a preStop hook runs the Hermes drain (drain request, wait
  for idle up to drain.timeout, planned-stop marker, an interrupt and a wait for the exit), then the kubelet
  sends its stop signal;
  terminationGracePeriodSeconds = drain.timeout + TEARDOWN_MARGIN_S;
- liveness by heartbeat: an exec probe fails when state/gateway.heartbeat is older than
  health.heartbeat_stale; initialDelaySeconds = health.startup_grace;
- env: a ConfigMap (envFrom) for plain values, secretKeyRef for secrets (fleet/spec/secrets.py
  decides which) to a Secret the user creates: <fleet>-<profile>-secrets, or the one named by
  --secret-name. The Secret is never rendered, not even with placeholder values: applied,
  it would overwrite the real one. A secret word of the command (`--token X`) becomes
  $(HERMES_FLEET_SECRET_ARG_<n>), a key of the same Secret. Proxies with NO_PROXY as loaded;
- the image is not in fleet.yaml: --image, default hermes-agent:latest (with a note).

In the container the Hermes root is /opt/data and the profile's volume is mounted at
/opt/data/profiles/<name> (the root itself for the default profile), so `hermes -p NAME`
finds its home exactly where it was on the host, relative to the root.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from fleet.export.base import (
    GENERATED_LINE, TEARDOWN_MARGIN_S, Advice, Export, ExportError, Note, RenderedFile, Target, common_notes,
    SecretSplit, hermes_prefix, hermes_root_of, hermes_suffix, human, merge_notes, notes_for, secret_arguments,
    secrets_detail, split_secrets, whole_seconds,
)
from fleet.export.emit import comment_block, notes_paragraphs, yaml_document, yaml_documents
from fleet.export.scripts import (
    CLEAR_THEN_EXEC_SCRIPT, HEARTBEAT_CHECK_SCRIPT_LINES, HERMES_STOP_SCRIPT_LINES, PROCESS_STOP_SCRIPT_LINES,
    script_multiline,
)
from fleet.spec.hashing import canonical_json, sha256_hex
from fleet.spec.markers import PROFILE_ENV, STATE_FILE_ENV, STOP_FILE_ENV
from fleet.spec.model import DRIVER_HERMES, FleetSpec, ProfileSpec

DEFAULT_IMAGE = "hermes-agent:latest"
DEFAULT_STORAGE_SIZE = "1Gi"
CONTAINER_ROOT = "/opt/data"  # HERMES_HOME in the container (the Hermes image's data directory)
CONTAINER_RUN_DIR = "/run/hermes-fleet"  # process driver: state and stop files (pod-lifetime emptyDir)
CONTAINER_NAME = "gateway"
HOME_VOLUME = "hermes-home"
RUN_VOLUME = "fleet-run"
PROBE_PERIOD_S = 10
PROBE_TIMEOUT_S = 5
PRINCIPAL = "hermes-fleet:kubernetes-prestop"
APP_NAME = "hermes-gateway"
MANAGED_BY = "hermes-fleet"
ANNOTATION_PREFIX = "hermes-fleet/"
ADVICE = Advice(
    engine="Kubernetes",
    stagger="apply the profiles in batches if simultaneous starts are a problem.",
    maintenance="ship updates as a new image (tag) and let the rollout replace the pod; the preStop hook "
    "drains it first, giving in-flight turns up to drain.timeout.",
    windows="use your deploy tool's windows (Argo CD sync windows, a suspended Flux Kustomization) to choose "
    "when changes roll out.",
    adoption="stop the gateways on the old host first (hermes-fleet drains them) and copy each Hermes home "
    "into its volume; never run both against one bot token.",
    suspend="pause your GitOps tool for that Deployment (Flux: annotation kustomize.toolkit.fluxcd.io/"
    "reconcile: disabled) or leave it out of kustomization.yaml.",
)
# GitOps tools delete objects that leave the manifest unless told not to. A Hermes home is
# data: hermes-fleet never deletes one, so neither may a prune.
KEEP_ON_PRUNE = (("argocd.argoproj.io/sync-options", "Prune=false"),
                 ("kustomize.toolkit.fluxcd.io/prune", "disabled"))

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
PROFILE_PLACEHOLDER = "{profile}"
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_IMAGE = re.compile(r"^[^\s]+$")


def dns_name(text: str) -> str:
    """A DNS-1123 name from fleet/profile names ([a-z0-9][a-z0-9_-]*): '_' becomes '-'."""
    return text.replace("_", "-").strip("-")


def label_value(text: str) -> str:
    """A label value (<= 63 characters, alphanumeric at both ends)."""
    return text[:63].strip("-_.")


@dataclass(frozen=True)
class KubernetesTarget(Target):
    """The Kubernetes engine: a fleet as manifests, with the image, namespace, storage and Secret they use."""
    image: str = DEFAULT_IMAGE
    image_given: bool = False
    namespace: str | None = None
    storage_size: str = DEFAULT_STORAGE_SIZE
    storage_class: str | None = None
    # The Secret the gateways read their secrets from; "{profile}" stands for the profile.
    secret_name: str | None = None

    name = "kubernetes"
    title = "Kubernetes"

    def __post_init__(self) -> None:
        if not self.image or not _IMAGE.match(self.image):
            raise ExportError(f"--image {self.image!r} is not an image reference (no spaces, not empty)")
        if self.namespace is not None and (len(self.namespace) > 63 or not _DNS_LABEL.match(self.namespace)):
            raise ExportError(f"--namespace {self.namespace!r} is not a valid namespace name "
                              "(lower-case letters, digits and '-', at most 63 characters)")
        if not _QUANTITY.match(self.storage_size):
            raise ExportError(f"--storage-size {self.storage_size!r} is not a Kubernetes quantity such as 1Gi or 500Mi")
        if self.storage_class is not None and not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", self.storage_class):
            raise ExportError(f"--storage-class {self.storage_class!r} is not a valid StorageClass name")
        if self.secret_name is not None:
            probe = self.secret_name.replace(PROFILE_PLACEHOLDER, "p")
            if len(probe) > 253 or not _DNS_SUBDOMAIN.match(probe):
                raise ExportError(f"--secret-name {self.secret_name!r} is not a valid Secret name (lower-case "
                                  f"letters, digits, '-' and '.', at most 253 characters; {PROFILE_PLACEHOLDER} "
                                  "stands for the profile)")

    # ------------------------------------------------------------ render

    def render(self, spec: FleetSpec) -> Export:
        _check_names(spec)
        self.check_shared_secrets(spec)
        notes = merge_notes(self.fleet_notes(spec), spec.names)
        files: list[RenderedFile] = []
        for profile in spec.profiles:
            header = self.profile_header(spec, profile, notes_for(notes, profile.name))
            files.append(RenderedFile(f"{profile.name}.yaml",
                                      header + yaml_documents(self.profile_documents(spec, profile))))
        index_header = self.index_header(spec, notes)
        kustomization: dict[str, object] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
        if self.namespace:
            kustomization["namespace"] = self.namespace
        kustomization["resources"] = [f.path for f in files]
        files.insert(0, RenderedFile("kustomization.yaml", index_header + yaml_document(kustomization)))
        # The stream is for `kubectl apply -f -`: resources only (a Kustomization is not a
        # cluster object), under the same header as kustomization.yaml.
        stream = self.index_header(spec, notes, stream=True) + "".join(f.text for f in files[1:])
        return Export(self.name, tuple(files), notes, stream)

    def index_header(self, spec: FleetSpec, notes: tuple[Note, ...], stream: bool = False) -> str:
        how = ("Apply with `kubectl apply -f FILE`, or pipe it into `kubectl apply -f -`." if stream else
               "Apply with `kubectl apply -k DIR`, or point Argo CD / Flux at DIR.")
        return comment_block([
            f'{GENERATED_LINE} kubernetes from fleet "{spec.name}". Do not edit: change fleet.yaml and export again.',
            "",
            f"{how} Each profile's Hermes home is a PersistentVolumeClaim mounted under {CONTAINER_ROOT}/profiles/; "
            "copy the profile's home from the old host into it before the first start. Create the Secrets "
            "named below first.",
            "",
            *notes_paragraphs(notes, "Kubernetes"),
        ])

    def profile_header(self, spec: FleetSpec, profile: ProfileSpec, notes: tuple[Note, ...]) -> str:
        own = tuple(n for n in notes if n.profiles)
        return comment_block([
            f'{GENERATED_LINE} kubernetes from fleet "{spec.name}", profile "{profile.name}". '
            "Do not edit: change fleet.yaml and export again.",
            "",
            *notes_paragraphs(own, "Kubernetes", empty="Nothing specific to this profile is lost in Kubernetes."),
            "",
            "Notes for the whole fleet: the top of kustomization.yaml.",
        ])

    # ------------------------------------------------------------ objects

    def profile_documents(self, spec: FleetSpec, profile: ProfileSpec) -> list[dict]:
        split = self.split_env(spec, profile)
        docs = [self.config_map(spec, profile, split.plain)]
        if profile.driver == DRIVER_HERMES:
            docs.append(self.volume_claim(spec, profile))
        docs.append(self.deployment(spec, profile, split))
        return docs

    def secret_of(self, spec: FleetSpec, profile: ProfileSpec) -> str:
        if self.secret_name is None:
            return secret_name(spec, profile)
        return self.secret_name.replace(PROFILE_PLACEHOLDER, base_name(spec, profile))

    def check_shared_secrets(self, spec: FleetSpec) -> None:
        """One Secret holds one value per key: profiles sharing a Secret must agree on each key."""
        seen: dict[tuple[str, str], tuple[str, str]] = {}
        for p in spec.profiles:
            split = self.split_env(spec, p)
            values = {**dict(p.env), **{key: secret for key, (_, secret) in secret_arguments(p.command).items()}}
            for key in split.secret_keys:
                value = values[key]
                first = seen.setdefault((self.secret_of(spec, p), key), (p.name, value))
                if first[1] != value:
                    raise ExportError(f"profiles '{first[0]}' and '{p.name}' both read {key} from the Secret "
                                      f"{self.secret_of(spec, p)} but set it to different values; put "
                                      f"{PROFILE_PLACEHOLDER} in --secret-name (one Secret per profile) or give them "
                                      "the same value")

    def split_env(self, spec: FleetSpec, profile: ProfileSpec) -> SecretSplit:
        env = dict(profile.env)
        env[PROFILE_ENV] = profile.name
        if profile.driver == DRIVER_HERMES:
            env["HERMES_HOME"] = CONTAINER_ROOT
            # The Hermes image redirects `gateway run` to its s6 supervisor unless told not
            # to; here the kubelet is the supervisor and the gateway is the main process.
            env["HERMES_GATEWAY_NO_SUPERVISE"] = "1"
        else:
            env[STATE_FILE_ENV] = posixpath.join(CONTAINER_RUN_DIR, "state.json")
            env[STOP_FILE_ENV] = posixpath.join(CONTAINER_RUN_DIR, "stop")
        # The image's `hermes` replaces hermes.command, so only a process command can carry a secret word.
        command = ("hermes", *hermes_suffix(profile)) if profile.driver == DRIVER_HERMES else profile.command
        # $$( is the kubelet's escape for a literal $( in the rest of the word.
        return split_secrets(env, command, lambda head, key: head.replace("$(", "$$(") + f"$({key})")

    def metadata(self, spec: FleetSpec, profile: ProfileSpec, name: str, annotations: dict | None = None) -> dict:
        meta: dict = {"name": name}
        if self.namespace:
            meta["namespace"] = self.namespace
        meta["labels"] = labels(spec, profile)
        if annotations:
            meta["annotations"] = dict(sorted(annotations.items()))
        return meta

    def config_map(self, spec: FleetSpec, profile: ProfileSpec, plain: dict[str, str]) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": self.metadata(spec, profile, config_map_name(spec, profile)),
            "data": plain,
        }

    def volume_claim(self, spec: FleetSpec, profile: ProfileSpec) -> dict:
        claim_spec: dict = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": self.storage_size}}}
        if self.storage_class:
            claim_spec["storageClassName"] = self.storage_class
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": self.metadata(spec, profile, claim_name(spec, profile), dict(KEEP_ON_PRUNE)),
            "spec": claim_spec,
        }

    def deployment(self, spec: FleetSpec, profile: ProfileSpec, split: SecretSplit) -> dict:
        selector = selector_labels(spec, profile)
        annotations = {ANNOTATION_PREFIX + "profile": profile.name, ANNOTATION_PREFIX + "driver": profile.driver}
        if not profile.prune:
            annotations.update(KEEP_ON_PRUNE)
        # A changed ConfigMap alone does not restart pods; hermes-fleet replaces a gateway
        # whose env changed, so the pod template carries a hash of it.
        env_hash = sha256_hex(canonical_json({"env": split.plain, "secrets": list(split.secret_keys)}))[:16]
        container: dict = {
            "name": CONTAINER_NAME,
            "image": self.image,
            "command": container_command(profile, split.command),
            "workingDir": CONTAINER_ROOT if profile.driver == DRIVER_HERMES else profile.cwd,
            "envFrom": [{"configMapRef": {"name": config_map_name(spec, profile)}}],
        }
        if split.secret_keys:
            secret = self.secret_of(spec, profile)
            container["env"] = [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
                                for key in split.secret_keys]
        container["livenessProbe"] = {
            "exec": {"command": ["/bin/sh", "-c", script_multiline(HEARTBEAT_CHECK_SCRIPT_LINES),
                                 "hermes-fleet-liveness", heartbeat_path(profile),
                                 str(whole_seconds(profile.health.heartbeat_stale))]},
            "initialDelaySeconds": whole_seconds(profile.health.startup_grace),
            "periodSeconds": PROBE_PERIOD_S,
            "timeoutSeconds": PROBE_TIMEOUT_S,
            "failureThreshold": 1,
        }
        container["lifecycle"] = {"preStop": {"exec": {"command": prestop_command(profile)}}}
        if profile.driver == DRIVER_HERMES:
            container["volumeMounts"] = [{"name": HOME_VOLUME, "mountPath": container_home(profile)}]
            volumes = [{"name": HOME_VOLUME, "persistentVolumeClaim": {"claimName": claim_name(spec, profile)}}]
        else:
            container["volumeMounts"] = [{"name": RUN_VOLUME, "mountPath": CONTAINER_RUN_DIR}]
            volumes = [{"name": RUN_VOLUME, "emptyDir": {}}]
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": self.metadata(spec, profile, deployment_name(spec, profile), annotations),
            "spec": {
                "replicas": 0 if profile.desired == "stopped" else 1,
                # Two gateways of one profile must never overlap: they share a home and bot tokens.
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {
                        "labels": labels(spec, profile),
                        "annotations": {ANNOTATION_PREFIX + "env-hash": env_hash,
                                        ANNOTATION_PREFIX + "profile": profile.name},
                    },
                    "spec": {
                        "terminationGracePeriodSeconds": whole_seconds(profile.drain.timeout) + TEARDOWN_MARGIN_S,
                        # Service links would add every Service's address to the gateway's env.
                        "enableServiceLinks": False,
                        "containers": [container],
                        "volumes": volumes,
                    },
                },
            },
        }

    # ------------------------------------------------------------ notes

    def fleet_notes(self, spec: FleetSpec) -> list[Note]:
        notes = common_notes(spec, ADVICE)
        if not self.image_given:
            notes.append(Note("container image",
                              f"fleet.yaml names no image; the Deployments use the placeholder {DEFAULT_IMAGE}.",
                              "export with --image REF: an image with `hermes` on PATH, and /bin/sh with sed, grep, "
                              "cut, date, stat and mv (coreutils or busybox) for the hooks."))
        for p in spec.profiles:
            if p.restart.policy != "always":
                notes.append(Note(f"restart.policy: {p.restart.policy}",
                                  "a Deployment always restarts its container (restartPolicy: Always).",
                                  "for a gateway that must stay down, set desired: stopped (replicas 0); a bare Pod "
                                  "with restartPolicy OnFailure/Never would lose the Deployment's replacement.",
                                  (p.name,)))
            backoff = ", ".join(human(b) for b in p.restart.backoff)
            notes.append(Note("restart.backoff, cap, reset_after",
                              f"the kubelet's CrashLoopBackOff (10s doubling to 5m, reset after 10m running) replaces "
                              f"fleet.yaml's schedule ({backoff}; cap {human(p.restart.cap)}; reset after "
                              f"{human(p.restart.reset_after)}); it is not settable per pod.",
                              "nothing per workload; alert on restarts (kube_pod_container_status_restarts_total).",
                              (p.name,)))
            if p.driver == DRIVER_HERMES:
                notes.append(Note("terminal exits (78, startup_failed)",
                                  "hermes-fleet leaves a gateway down that exits 78 (fatal configuration) or exits 0 "
                                  "with gateway_state startup_failed; a Deployment restarts it, in CrashLoopBackOff.",
                                  "alert on CrashLoopBackOff and fix the profile's config.", (p.name,)))
                prefix = hermes_prefix(p)
                if prefix != ("hermes",):
                    notes.append(Note("hermes.command", f"the host command {' '.join(prefix)} is replaced by `hermes` "
                                      "from the image.", "put `hermes` on the image's PATH, or patch the Deployment's "
                                      "command with kustomize.", (p.name,)))
                if p.cwd != hermes_root_of(p):
                    notes.append(Note("cwd", f"the host directory {p.cwd} does not exist in the container; the "
                                      f"gateway runs in {CONTAINER_ROOT}.", "patch workingDir with kustomize if "
                                      "the gateway needs another directory.", (p.name,)))
            else:
                notes.append(Note("driver: process", f"the image must contain the command "
                                  f"({p.command[0]}) and workingDir {p.cwd}; no volume is rendered (fleet.yaml "
                                  "declares no data directory for it).", "set the image and add volumes with a "
                                  "kustomize patch.", (p.name,)))
        for p in spec.profiles:
            split = self.split_env(spec, p)
            if split.secret_keys:
                ns = f" -n {self.namespace}" if self.namespace else ""
                notes.append(Note("secrets", f"{secrets_detail(split)}; the Deployment reads them from the Secret "
                                  f"{self.secret_of(spec, p)}, which you create.",
                                  f"`kubectl{ns} create secret generic {self.secret_of(spec, p)} --from-env-file=FILE` "
                                  f"with FILE holding KEY=value lines for those keys (or a sealed/external secret "
                                  f"of that name).", (p.name,)))
        return notes


# ---------------------------------------------------------------- names and paths


def base_name(spec: FleetSpec, profile: ProfileSpec) -> str:
    return dns_name(f"{spec.name}-{profile.name}")


def deployment_name(spec: FleetSpec, profile: ProfileSpec) -> str:
    return base_name(spec, profile)


def config_map_name(spec: FleetSpec, profile: ProfileSpec) -> str:
    return base_name(spec, profile) + "-env"


def claim_name(spec: FleetSpec, profile: ProfileSpec) -> str:
    return base_name(spec, profile) + "-home"


def secret_name(spec: FleetSpec, profile: ProfileSpec) -> str:
    return base_name(spec, profile) + "-secrets"


def selector_labels(spec: FleetSpec, profile: ProfileSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/instance": label_value(profile.name),
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/part-of": label_value(spec.name),
    }


def labels(spec: FleetSpec, profile: ProfileSpec) -> dict[str, str]:
    return dict(sorted({**selector_labels(spec, profile), "app.kubernetes.io/managed-by": MANAGED_BY}.items()))


def container_home(profile: ProfileSpec) -> str:
    return CONTAINER_ROOT if profile.name == "default" else posixpath.join(CONTAINER_ROOT, "profiles", profile.name)


def heartbeat_path(profile: ProfileSpec) -> str:
    if profile.driver == DRIVER_HERMES:
        return posixpath.join(container_home(profile), "state", "gateway.heartbeat")
    return posixpath.join(CONTAINER_RUN_DIR, "state.json")


def container_command(profile: ProfileSpec, command: tuple[str, ...]) -> list[str]:
    if profile.driver == DRIVER_HERMES:
        return list(command)
    # A stop file left by the last preStop (the emptyDir outlives a container restart)
    # would stop the restarted child at once: clear it, then exec the child as the main process.
    return ["/bin/sh", "-c", CLEAR_THEN_EXEC_SCRIPT, "hermes-fleet-start",
            posixpath.join(CONTAINER_RUN_DIR, "stop"), *command]


def prestop_command(profile: ProfileSpec) -> list[str]:
    budget = str(whole_seconds(profile.drain.timeout))
    if profile.driver == DRIVER_HERMES:
        return ["/bin/sh", "-c", script_multiline(HERMES_STOP_SCRIPT_LINES), "hermes-fleet-stop",
                container_home(profile), budget, PRINCIPAL, "auto", str(TEARDOWN_MARGIN_S)]
    return ["/bin/sh", "-c", script_multiline(PROCESS_STOP_SCRIPT_LINES), "hermes-fleet-stop",
            posixpath.join(CONTAINER_RUN_DIR, "stop"), budget, "kubernetes preStop", "auto"]


def _check_names(spec: FleetSpec) -> None:
    seen: dict[str, str] = {}
    for p in spec.profiles:
        for key in (base_name(spec, p), "label:" + label_value(p.name)):
            other = seen.get(key)
            if other is not None:
                raise ExportError(f"profiles '{other}' and '{p.name}' map to the same Kubernetes name "
                                  f"'{key.removeprefix('label:')}' ('_' becomes '-', labels keep 63 characters); "
                                  "rename one of them")
            seen[key] = p.name
