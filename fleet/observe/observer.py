"""Store + state directory + OS -> Observed. Never writes anything."""

from __future__ import annotations

import dataclasses
import os
import re
import time

from fleet.maintenance import queue
from fleet.observe import hermes_files as hf
from fleet.observe import identity
from fleet.observe.model import LiveProcess, Observed, Orphan, ProfileObservation, Verdict, WriteRefusal
from fleet.platform.base import Platform, ProcessInfo, still_runs
from fleet.platform.write_probe import write_refusal
from fleet.service.native import NativeIndex, find_native_service, same_home
from fleet.spec.markers import PROFILE_ENV, SPEC_HASH_ENV, STATE_DIR_ENV
from fleet.spec.model import DRIVER_HERMES, ProfileSpec
from fleet.store.claims import LEASED, STALE, claim_liveness, read_claim
from fleet.store.db import ProfileHistory, Store
from fleet.store.fence import file_id
from fleet.store.layout import StateDir
from fleet.store.records import read_record
from fleet.store.takeovers import Takeover, open_takeovers

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def profile_names_on_disk(state: StateDir) -> set[str]:
    try:
        entries = os.listdir(state.root)
    except OSError:
        return set()
    return {e[:-4] for e in entries if e.endswith(".pid") and _NAME.match(e[:-4])}


class Observer:
    def __init__(self, state: StateDir, store: Store, platform: Platform):
        self.state = state
        self.store = store
        self.platform = platform
        # Marker and child proofs only: the environment a process started with never changes (nor the one this
        # controller gave a child it still holds); the other proofs (a held lock, a command line) can.
        self._proven: dict[tuple[int, int | None, str], identity.Proof] = {}
        self._foreign: dict[tuple[int, int | None], tuple[str, str] | None] = {}  # (state dir, Hermes home)
        self._natives = NativeIndex()
        self._takeovers: dict[str, Takeover] = {}
        self._blocked: dict[str, WriteRefusal] = {}  # per profile: when its heartbeat's directory last refused writes

    def _check(self, name: str, spec: ProfileSpec | None, pid: int, start_ticks: int | None,
               create_time: float) -> identity.Check:
        key = (pid, start_ticks, name)
        cached = self._proven.get(key)
        if cached is not None:
            info = self.platform.process_info(pid)
            if info is not None and info.alive and info.started_as(start_ticks, create_time):
                return identity.Check(Verdict.ALIVE, info, cached)
        result = identity.check(self.platform, pid, start_ticks, create_time, name, str(self.state.root), spec)
        if result.proof is not None and result.proof.how in (identity.PROOF_MARKER, identity.PROOF_CHILD):
            if len(self._proven) > 4096:
                self._proven.clear()
            self._proven[key] = result.proof
        return result

    def _fleet_inputs(self) -> dict[str, object]:
        """What the store and the host say of the whole fleet, read afresh for a look (a whole one or a few
        profiles'): the open take-overs, the host's native units (read on first use), and the pending restart
        requests, first per profile."""
        self._natives = NativeIndex()
        self._takeovers = {t.profile: t for t in open_takeovers(self.store)}
        requests: dict[str, object] = {}
        for req in self.store.pending_requests():
            requests.setdefault(req.profile, req)
        return requests

    def observe(self, specs: dict[str, ProfileSpec], *, now: float, scan: bool) -> Observed:
        histories = self.store.histories()
        inventory = self.store.inventory()
        requests = self._fleet_inputs()
        self._blocked = {name: seen for name, seen in self._blocked.items() if name in specs}
        names = sorted(set(specs) | {e.name for e in inventory} | profile_names_on_disk(self.state))
        profiles: dict[str, ProfileObservation] = {}
        claimed: set[int] = set()
        for name in names:
            obs = self._observe_profile(name, specs.get(name), histories.get(name) or ProfileHistory(name),
                                        requests.get(name), now)
            if obs.process:
                claimed.add(obs.process.pid)
            profiles[name] = obs
        orphans: list[Orphan] = []
        if scan:
            profiles, orphans = self._scan(specs, profiles, claimed, {e.name for e in inventory})
        # Store.last_spawn_at() from the histories already read: one query less on every pass.
        last_spawn = max((h.last_start for h in histories.values() if h.last_start), default=None)
        return Observed(observed_at=now, epoch=self.store.epoch, profiles=profiles, inventory=inventory,
                        orphans=tuple(orphans), last_spawn_at=last_spawn, scanned=scan,
                        maintenance=tuple(queue.open_requests(self.store)))

    def refreshed(self, observed: Observed, specs: dict[str, ProfileSpec], names: frozenset[str], *,
                  now: float) -> Observed:
        """`observed` with these profiles looked at again, the others as they were; what concerns the whole fleet
        (take-overs, maintenance, the inventory, the last spawn for the stagger) is read afresh. For profiles whose
        records a pass just fixed (a reclaim), or whose gateway's exit just woke the controller: their next step is
        planned from what is now true of them, without a look at every profile."""
        requests = self._fleet_inputs()
        profiles = dict(observed.profiles)
        for name in sorted(names):
            profiles[name] = self._observe_profile(name, specs.get(name), self.store.history(name),
                                                   requests.get(name), now)
        return dataclasses.replace(observed, profiles=profiles, observed_at=now, inventory=self.store.inventory(),
                                   epoch=self.store.epoch, last_spawn_at=self.store.last_spawn_at(),
                                   maintenance=tuple(queue.open_requests(self.store)))

    # -- one profile -------------------------------------------------------------------------
    def _observe_profile(self, name, spec: ProfileSpec | None, history, request, now: float) -> ProfileObservation:
        read = read_record(self.state.record(name))
        record, problem, verdict, process = read.record, read.problem, Verdict.NONE, None
        if problem:
            verdict = Verdict.CORRUPT
        elif record is not None:
            v = self._check(name, spec, record.pid, record.start_ticks, record.create_time)
            verdict = v.verdict
            if verdict == Verdict.ALIVE:
                info, _ = v.proven()
                process = LiveProcess(pid=record.pid, start_ticks=info.start_ticks, create_time=info.create_time,
                                      cmdline=info.cmdline, started_at=record.started_at, spec_hash=record.spec_hash,
                                      source="record", record_epoch=record.epoch,
                                      external_supervisor_flag=not record.adopted or self._flag_ok(spec, info.cmdline))
            elif verdict in (Verdict.REUSED, Verdict.FOREIGN, Verdict.UNRELATED):
                why = v.proof.why_not if v.proof is not None else ""
                problem = {Verdict.REUSED: f"record names pid {record.pid}, which is now another program",
                           Verdict.FOREIGN: f"record names pid {record.pid}, which is not ours to signal ("
                                      f"{why or 'another user'})",
                           Verdict.UNRELATED: f"record names pid {record.pid}, which is not this profile's gateway"
                                        + (f" ({why})" if why else "")}[verdict]
        status = heartbeat = None
        drain_file = False
        native = None
        other_fleet, claim, claim_note = None, "", ""
        if spec is not None:
            if spec.driver == DRIVER_HERMES:
                other_fleet, claim, claim_note = self._ownership(spec)
                if process is None and other_fleet is None:
                    process = self._from_hermes_pidfile(name, spec)
                status = hf.read_gateway_status(spec.hermes_home)
                heartbeat = hf.read_heartbeat(spec.hermes_home)
                heartbeat_dir = os.path.dirname(os.path.join(spec.hermes_home, hf.HEARTBEAT))
                drain_file = hf.drain_requested(spec.hermes_home)
                native = find_native_service(spec.hermes_home, self._natives)
            else:
                state_file = self.state.state_file(name)
                status = hf.read_contract_status(str(state_file))
                heartbeat = status.updated_at if status else None
                heartbeat_dir = str(state_file.parent)
            # Only a heartbeat the planner may judge: overdue, or missing where one is owed (a gateway of the
            # process driver that never beats is never judged, and is not probed on every pass).
            owed = spec.driver == DRIVER_HERMES if heartbeat is None else now - heartbeat > spec.health.heartbeat_stale
            if process is not None and owed:
                self._probe_heartbeat_dir(name, heartbeat_dir, now)
        return ProfileObservation(name=name, record=record, record_problem=problem, record_verdict=verdict,
                                  process=process, status=status, heartbeat_at=heartbeat,
                                  heartbeat_blocked=self._blocked.get(name), drain_file=drain_file,
                                  native_service=native, takeover=self._takeovers.get(name), history=history,
                                  restart_request=request,
                                  other_fleet=other_fleet, claim=claim, claim_note=claim_note)

    def _probe_heartbeat_dir(self, name: str, directory: str, now: float) -> None:
        """Asked only of a heartbeat the planner may judge: a gateway cannot beat into a read-only or full
        directory, and the planner must not take that silence for a hang. Remembered, because the directory may
        take writes again a moment before the gateway's next beat."""
        why = write_refusal(directory)
        if why is not None:
            self._blocked[name] = WriteRefusal(at=now, why=why)
            return
        # The refusal ended somewhere since the last probe, perhaps a moment ago: the gateway's limit starts now.
        seen = self._blocked.get(name)
        if seen is not None and not seen.lifted:
            self._blocked[name] = WriteRefusal(at=now, why=seen.why, lifted=True)

    def _flag_ok(self, spec: ProfileSpec | None, cmdline: tuple[str, ...]) -> bool:
        if spec is None or spec.driver != DRIVER_HERMES or not cmdline:  # empty: exiting, not a verdict
            return True
        return hf.has_external_supervisor_flag(cmdline)

    def _from_hermes_pidfile(self, name: str, spec: ProfileSpec) -> LiveProcess | None:
        """A gateway Hermes itself recorded, if it passes the identity rule (lock held, same start, its
        command line for this profile, or our markers)."""
        rec = hf.read_hermes_pid(spec.hermes_home)
        if rec is None:
            return None
        info = self.platform.process_info(rec.pid)
        if info is None or not info.alive:
            return None
        if rec.start_time is not None and info.start_ticks is not None and rec.start_time != info.start_ticks:
            return None
        v = self._check(name, spec, info.pid, info.start_ticks, info.create_time)
        if v.verdict != Verdict.ALIVE:
            return None
        info, proof = v.proven()
        return self._live(info, name, "hermes_pidfile", spec, proof)

    def _live(self, info: ProcessInfo, name: str, source: str, spec: ProfileSpec | None,
              proof: identity.Proof) -> LiveProcess:
        env = proof.env or {}
        spec_hash = env.get(SPEC_HASH_ENV) if env.get(STATE_DIR_ENV) == str(self.state.root) else None
        return LiveProcess(pid=info.pid, start_ticks=info.start_ticks, create_time=info.create_time,
                           cmdline=info.cmdline, started_at=info.create_time, spec_hash=spec_hash, source=source,
                           record_epoch=None, external_supervisor_flag=self._flag_ok(spec, info.cmdline))

    # -- other fleets ----------------------------------------------------------------------------
    def _foreign_gateway(self, info: ProcessInfo) -> tuple[str, str] | None:
        """(state directory, Hermes home) of a process another fleet started; None for ours or unmarked."""
        key = (info.pid, info.start_ticks)
        if key not in self._foreign:
            env = self.platform.process_environ(info.pid) or {}
            other, profile, root = env.get(STATE_DIR_ENV), env.get(PROFILE_ENV), env.get("HERMES_HOME")
            found = None
            if other and profile and root and os.path.normpath(other) != str(self.state.root):
                root = same_home(root)
                found = (other, root if profile == "default" else os.path.join(root, "profiles", profile))
            if len(self._foreign) > 4096:
                self._foreign.clear()
            self._foreign[key] = found
        return self._foreign[key]

    def _ownership(self, spec: ProfileSpec) -> tuple[str | None, str, str]:
        """(why another fleet holds this Hermes home or None, our claim's state, whose claim it is)."""
        other = None
        rec = hf.read_hermes_pid(spec.hermes_home)
        if rec is not None:
            info = self.platform.process_info(rec.pid)
            same_start = info is not None and (rec.start_time is None or info.start_ticks is None
                                               or rec.start_time == info.start_ticks)
            if info is not None and info.alive and same_start:
                foreign = self._foreign_gateway(info)
                if foreign and foreign[1] == same_home(spec.hermes_home):
                    other = f"pid {info.pid} is the gateway of another fleet (state directory {foreign[0]})"
        claim = read_claim(spec.hermes_home)
        if claim is None:
            return other, "none", ""
        here = file_id(self.state.root)
        if claim.state_dir == str(self.state.root) and here is not None and (here.dev, here.ino) == (claim.dev, claim.ino):
            mine = claim.store_id == self.store.meta("store_id")
            return other, "ours" if mine else "stale", "" if mine else f"an earlier store of {claim.state_dir}"
        liveness = claim_liveness(claim, self.platform.lock_is_held, time.time())
        if liveness == STALE:
            return other, "stale", claim.describe()
        whose = claim.describe()
        if liveness == LEASED:
            whose += (f" (its controller is not running; the claim lapses at "
                      f"{time.strftime('%H:%M:%S', time.localtime(claim.lapses_at()))} unless it comes back)")
        return other or f"{spec.hermes_home} is claimed by {whose}", "other", whose

    # -- unrecorded processes -------------------------------------------------------------------
    def _ended_since_listed(self, info: ProcessInfo) -> bool:
        """Whether a process whose environment could not be read has ended since the process table was listed:
        a gateway that gives up at once (another holds its lock) would otherwise be reported as unproven."""
        return not still_runs(self.platform, info)

    def _scan(self, specs, profiles, claimed, inventory_names):
        """Find live processes of our profiles that no record names (adoption) and gateways nobody manages."""
        me = os.getpid()
        candidates: dict[str, list[tuple[ProcessInfo, str]]] = {}
        others: dict[str, str] = {}  # profile -> another fleet's gateway in its Hermes home
        infos = [i for i in self.platform.iter_processes() if i.pid != me and i.alive]
        homes = {s.name: same_home(s.hermes_home) for s in specs.values() if s.driver == DRIVER_HERMES}  # once a scan
        for info in infos:
            if info.pid in claimed:
                continue
            env = self.platform.process_environ(info.pid) or {}
            if not env and self._ended_since_listed(info):
                continue  # gone (or a zombie) since the listing: nothing to adopt, nothing to warn about
            marker = env.get(PROFILE_ENV)
            if marker:
                if env.get(STATE_DIR_ENV) == str(self.state.root) and _NAME.match(marker):
                    if not identity.is_gateway_subprocess(specs.get(marker), info):
                        candidates.setdefault(marker, []).append((info, "env_marker"))
                else:
                    foreign = self._foreign_gateway(info)
                    for name, home in homes.items():
                        if foreign and home == foreign[1]:
                            others.setdefault(name, f"pid {info.pid} is the gateway of another fleet "
                                                    f"(state directory {foreign[0]})")
                continue
            if hf.looks_like_gateway(info.cmdline):
                pname = hf.cmdline_profile(info.cmdline)
                spec = specs.get(pname)
                root = env.get("HERMES_HOME")
                if spec is not None and spec.driver == DRIVER_HERMES and root is not None and \
                        not identity.runs_in_root(spec, root):
                    continue  # a gateway of another Hermes root
                candidates.setdefault(pname, []).append((info, "cmdline"))
                continue
            joined = " ".join(info.cmdline)
            for spec in specs.values():
                if spec.match and re.search(spec.match, joined):
                    candidates.setdefault(spec.name, []).append((info, "match"))
                    break
        # A gateway's own subprocesses inherit its environment; only the topmost process counts.
        candidate_pids = {i.pid for group in candidates.values() for i, _ in group} | claimed
        orphans: list[Orphan] = []
        out = dict(profiles)
        for name, why in others.items():
            base = out.get(name) or ProfileObservation(name=name, history=ProfileHistory(name))
            if base.other_fleet is None:
                out[name] = ProfileObservation(**{**base.__dict__, "other_fleet": why})
        for name, group in sorted(candidates.items()):
            roots = sorted((c for c in group if c[0].ppid not in candidate_pids), key=lambda c: c[0].create_time)
            if not roots:
                continue
            spec = specs.get(name)
            obs = out.get(name)
            managed = spec is not None or name in inventory_names
            adopted = None
            if managed and (obs is None or obs.process is None):
                for info, source in roots:  # the oldest that passes the identity rule is adopted
                    v = self._check(name, spec, info.pid, info.start_ticks, info.create_time)
                    if v.verdict == Verdict.ALIVE:
                        adopted = info.pid
                        base = obs or ProfileObservation(name=name, history=ProfileHistory(name))
                        proven, proof = v.proven()
                        out[name] = ProfileObservation(**{**base.__dict__,
                                                          "process": self._live(proven, name, source, spec, proof)})
                        break
            for info, source in roots:
                if info.pid == adopted:
                    continue
                reason = ("duplicate" if adopted is not None or (obs is not None and obs.process is not None)
                          else f"unproven ({source})") if managed else f"unmanaged ({source})"
                orphans.append(Orphan(pid=info.pid, profile=name, cmdline=info.cmdline, reason=reason))
        return out, orphans
