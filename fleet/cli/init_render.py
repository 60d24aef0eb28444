"""The forms of what `hermes-fleet init` found: the fleet.yaml it writes (each profile with a comment saying where
it came from and what `apply` will do to it), the discovery as JSON, and the summary it prints. They format the
discovery value and decide nothing; no value of a secret is in any of them (only key names are found)."""

from __future__ import annotations

import json
import os
import re
import textwrap
from datetime import UTC, datetime

from fleet import __version__
from fleet.observe.discovery import (
    ADOPT, BY_FLEET, BY_HAND, BY_LAUNCHD, BY_SYSTEMD, BY_UNKNOWN, BY_WINDOWS_TASK, CHECK, OTHER_FLEET, SPAWN,
    STOPPED, TAKEOVER, Discovery, ProfileFinding, UnitFinding,
)
from fleet.service.native_units import LAUNCHD, SYSTEMD, release_command, takeover_command
from fleet.spec.secrets import mask_argv

FORMAT_VERSION = "1.0"
WIDTH = 100
VERB_LABELS = {ADOPT: "adopt", TAKEOVER: "take over", SPAWN: "spawn", STOPPED: "stays stopped",
               CHECK: "stays stopped", OTHER_FLEET: "conflict"}
# Keys YAML 1.1 reads as something other than a string.
_YAML_SPECIAL = frozenset("y n yes no on off true false null".split())


# ---------------------------------------------------------------- sentences

def unit_text(f: UnitFinding) -> str:
    u = f.unit
    state = ", ".join(s for s in (u.enabled, u.active) if s) or "state unknown"
    if u.masked:
        state = "masked"
    kind = {SYSTEMD: f"{u.scope} systemd unit", LAUNCHD: "launchd agent"}.get(u.manager, "scheduled-task launcher")
    sticky = f"; it runs the sticky profile {f.via_active_profile!r}, not the default" if f.via_active_profile else ""
    return f"native {kind} {u.name} ({state}){sticky}"


def origin(p: ProfileFinding) -> str:
    """Where the entry came from: what runs the profile now."""
    g = p.gateway
    units = "; ".join(unit_text(f) for f in p.units)
    if g is not None:
        by = {BY_HAND: f"started by hand (pid {g.pid})",
              BY_SYSTEMD: f"run by the systemd unit {g.by} (pid {g.pid})",
              BY_LAUNCHD: f"run by the launchd agent {g.by} (pid {g.pid})",
              BY_WINDOWS_TASK: f"run by the scheduled task {g.by} (pid {g.pid})",
              BY_FLEET: f"run by hermes-fleet, state directory {g.by} (pid {g.pid})",
              BY_UNKNOWN: f"pid {g.pid}, whose environment cannot be read (another user's?), so who runs it is "
                          "not known"}[g.runner]
        return f"live, {by}" + (f"; {units}" if units else "")
    if p.multiplexed_by is not None:
        return f"served by the default gateway (pid {p.multiplexed_by}) as a profile multiplexer"
    running = "not running" + (f": {p.liveness_note}" if p.liveness_note else "")
    return f"{units}; {running}" if units else running


def apply_text(p: ProfileFinding) -> str:
    """What `apply` will do to the entry as written."""
    if p.verb == ADOPT:
        text = "apply adopts it as it runs, without a restart"
        if p.gateway is not None and not p.gateway.external_supervisor:
            text += ("; then, once no agent is active, replaces it with a gateway the fleet starts (it runs "
                     "without --external-supervisor, so `hermes update` would restart it behind the fleet's back)")
        return text
    if p.verb == TAKEOVER:
        return (f"apply leaves it to its native service and refuses (exit 3) while that service owns it; "
                f"`{takeover_command(p.name)}` hands it to the fleet, `{release_command(p.name)}` gives it back")
    if p.verb == SPAWN:
        return "apply starts it (" + ("hermes" if p.name == "default" else f"hermes -p {p.name}") + \
            " gateway run --external-supervisor)"
    if p.verb == STOPPED:
        return ("written desired: stopped, because Hermes refuses a profile's own gateway while a multiplexer "
                "serves it; turn gateway.multiplex_profiles off, then set desired: running")
    if p.verb == CHECK:
        status = "hermes gateway status" if p.name == "default" else f"hermes -p {p.name} gateway status"
        return (f"written desired: stopped until you know what runs it (`{status}`); a gateway the fleet cannot "
                "prove its own is never adopted, and a second one would be refused; then set desired: running")
    if p.verb == OTHER_FLEET:
        return ("if that state directory is this fleet's, apply keeps it; otherwise apply reports a conflict "
                "(owned by another fleet) and never touches it")
    raise AssertionError(f"unknown verb {p.verb}")


def detail_lines(p: ProfileFinding, d: Discovery) -> list[str]:
    """The rest of a profile's comment: where its tokens and proxies are, warnings that concern it."""
    out = []
    if p.tokens:
        out.append(f"tokens stay in {os.path.join(p.home, '.env')} (names only here): {', '.join(p.tokens)}")
    for proxy in p.proxies:
        if proxy.inherited:
            out.append(f"proxy: {proxy.key} is set in {proxy.where}, which a gateway the fleet starts does not "
                       f"inherit; put it in {os.path.join(p.home, '.env')} or fleet.yaml's proxy: (not copied here)")
        else:
            out.append(f"proxy: {proxy.key} in {proxy.where}; the gateway keeps reading it there (not copied here)")
    out += [f"warning: {w.message}" for w in d.warnings if w.profile == p.name and w.code != "active_profile"]
    return [line if line.endswith(".") else line + "." for line in out]


# ---------------------------------------------------------------- fleet.yaml

def manifest_text(d: Discovery, now: float) -> str:
    lines = _header(d, now)
    lines += ["version: 1", "hermes:"]
    lines += _comment(f"The host's Hermes root (found: {d.root_source}). Keep it: a fleet under a second root "
                      "would rewrite the first root's same-named native units at every gateway start.", "  ")
    lines.append(f"  home: {_scalar(d.root)}")
    if d.command:
        lines += _comment(f"How to run the Hermes CLI: {d.command_source}.", "  ")
        lines.append("  command: [" + ", ".join(_scalar(w) for w in d.command) + "]")
    else:
        lines += _comment(f"command: {d.command_source}; set the command that runs the Hermes CLI, such as "
                          "[/opt/hermes/venv/bin/hermes] (the default is [hermes], found on PATH).", "  ")
    lines += _profiles(d)
    return "\n".join(lines) + "\n"


def _header(d: Discovery, now: float) -> list[str]:
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = _comment(f"Written by `hermes-fleet init` (hermes-fleet {__version__}, {stamp}) from what this host "
                     f"runs under the Hermes root {d.root}. Each profile's comment says where it came from and what "
                     "`apply` will do to it. Check it with `hermes-fleet diff -f <this file>`; `hermes-fleet "
                     "apply -f <this file>` makes it so.")
    listed = {p.name for p in d.listed}
    for w in d.warnings:
        if w.code == "active_profile" or w.profile not in listed:
            lines.append("#")
            lines += _comment(("active_profile: " if w.code == "active_profile" else "warning: ") + w.message)
    return lines + ["#"] if lines else []


def _profiles(d: Discovery) -> list[str]:
    listed = d.listed
    lines = ["profiles:" + ("" if listed else " {}")]
    notes = []
    default = d.profile("default")
    if default is not None and not default.listed:
        notes.append("default (the root itself) has no .env, config.yaml or gateway: left out; add `default: {}` "
                     "to run it.")
    notes += [f"{os.path.join(d.root, 'profiles', name)} is left out: {why}." for name, why in d.skipped]
    if not d.root_exists:
        notes.append(f"{d.root} does not exist yet: `hermes profile create NAME` makes a profile; then run init "
                     "again, or add profiles here.")
    elif not listed:
        notes.append("no profile found: `hermes profile create NAME` makes one; then run init again, or add "
                     "profiles here.")
    for note in notes:
        lines += _comment(note, "  ")
    for p in listed:
        lines += _comment(f"{p.name}: {origin(p)}.", "  ")
        for extra in [apply_text(p) + "."] + detail_lines(p, d):
            lines += _comment(extra, "  ", indent="  ")
        body = "{}" if p.desired == "running" else "{desired: stopped}"
        lines.append(f"  {_key(p.name)}: {body}")
    return lines


def _comment(text: str, prefix: str = "", indent: str = "") -> list[str]:
    text = " ".join(text.split())  # no line break of a path or a message can end the comment
    width = max(40, WIDTH - len(prefix) - 2 - len(indent))
    return [f"{prefix}# {indent}{line}".rstrip() for line in textwrap.wrap(
        text, width, break_long_words=False, break_on_hyphens=False)] or [f"{prefix}#"]


def _scalar(value: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is a subset of it)."""
    return json.dumps(value, ensure_ascii=False)


def _key(name: str) -> str:
    if name in _YAML_SPECIAL or not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
        return _scalar(name)
    return name


# ---------------------------------------------------------------- JSON

def discovery_json(d: Discovery, *, path: str, written: bool, text: str) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "kind": "discovery",
        "tool_version": __version__,
        "root": {"path": d.root, "source": d.root_source, "exists": d.root_exists},
        "active_profile": d.active_profile,
        "multiplexer": ({"pid": d.multiplexer[0], "served_profiles": list(d.multiplexer[1])}
                        if d.multiplexer else None),
        "multiplex_configured": d.multiplex_configured,
        "command": {"argv": mask_argv(list(d.command)) if d.command else None, "source": d.command_source},
        "profiles": [_profile_json(p) for p in d.profiles],
        "units": [_unit_json(f) for f in d.units],
        "skipped": [{"name": name, "reason": why} for name, why in d.skipped],
        "warnings": [{"code": w.code, "profile": w.profile, "message": w.message} for w in d.warnings],
        "manifest": {"path": path, "written": written, "text": text},
    }


def _profile_json(p: ProfileFinding) -> dict:
    g = p.gateway
    return {
        "name": p.name, "home": p.home, "listed": p.listed, "desired": p.desired if p.listed else None,
        "plan": p.verb, "origin": origin(p), "apply": apply_text(p),
        "files": list(p.files), "tokens": list(p.tokens),
        "proxies": [{"key": k.key, "where": k.where, "inherited": k.inherited} for k in p.proxies],
        "gateway": {"state": p.liveness, "note": p.liveness_note, "pid": g.pid if g else None,
                    "runner": g.runner if g else None, "by": g.by if g else None,
                    "external_supervisor": g.external_supervisor if g else None},
        "units": [f.unit.name for f in p.units],
        "multiplexed_by": p.multiplexed_by,
    }


def _unit_json(f: UnitFinding) -> dict:
    u = f.unit
    return {
        "manager": u.manager, "scope": u.scope, "name": u.name, "path": u.path, "dropins": list(u.dropins),
        "hermes_home": u.hermes_home, "profile_arg": u.profile_arg, "argv": mask_argv(list(u.argv)),
        "env_keys": list(u.env_keys), "serves": f.serves, "profile": f.profile, "this_root": f.this_root,
        "via_active_profile": f.via_active_profile, "enabled": u.enabled, "active": u.active,
        "main_pid": u.main_pid, "masked": u.masked, "problem": u.problem or None,
    }


# ---------------------------------------------------------------- the summary

def summary_lines(d: Discovery, path: str, *, written: bool) -> list[str]:
    listed = d.listed
    head = (f"Wrote {path}" if written else f"Would write {path}") + \
        f": the Hermes root {d.root} ({d.root_source}), {len(listed)} profile(s)."
    out = [head]
    if listed:
        width = max(len(p.name) for p in listed)
        verb_width = max(len(VERB_LABELS[p.verb]) for p in listed)
        out.append("")
        out += [f"  {p.name:<{width}}  {VERB_LABELS[p.verb]:<{verb_width}}  {origin(p)}" for p in listed]
    if d.warnings:
        out += ["", "Warnings:"]
        for w in d.warnings:
            out += textwrap.wrap(f"{w.profile + ': ' if w.profile else ''}{w.message}", WIDTH, initial_indent="  ",
                                 subsequent_indent="    ", break_long_words=False, break_on_hyphens=False)
    takeovers = [p.name for p in listed if p.verb == TAKEOVER]
    out += ["", f"Next: hermes-fleet diff -f {path}, then hermes-fleet apply -f {path}."]
    if takeovers:
        out.append("A native service owns " + ", ".join(takeovers) + ": apply refuses until it is taken over ("
                   + "; ".join(takeover_command(n) for n in takeovers) + ").")
    return out
