"""`source set|show|suspend|resume|remove` and `sync`: the git branch the controller follows.

The CLI only records what a person asks for (in the store's `sources` row) and wakes the controller; the
controller fetches, validates and applies (fleet/controller/source_follow.py)."""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from pathlib import Path

import typer

from fleet.cli.common import (
    EXIT_FAILED, EXIT_OK, EXIT_REFUSED, check_output, emit_json, fail, open_store, state_for,
)
from fleet.cli.console import Exit, echo
from fleet.cli.options import OutputOption, StateDirOption
from fleet.cli.source_view import source_json, source_summary, when_text
from fleet.controller.status import SourceStatus, SourceSync, source_status
from fleet.platform.wake import send_wake
from fleet.spec.durations import format_duration, parse_duration
from fleet.store.db import Store, who
from fleet.store.layout import StateDir
from fleet.store.sources import (
    DEFAULT_SOURCE, Source, SourceConfig, get_source, remove_source, request_sync, resume_source, set_source,
    suspend_source,
)

MIN_INTERVAL = 1.0
VERIFY_MODES = ("none", "ssh", "gpg")
NO_SOURCE_HINT = "set one with `hermes-fleet source set git REPO --ref main --path fleet.yaml`"

source_app = typer.Typer(
    help="Follow a git branch: the controller fetches it on an interval (and at once on `hermes-fleet sync`), "
         "validates the manifest at each new commit exactly as `apply` does, and applies it.",
    no_args_is_help=True)


# -- checking what `source set` is given ---------------------------------------------------------------

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SCHEME_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<userinfo>[^/?#@]*)@")
_SCP_LIKE = re.compile(r"^(?:[\w.-]+@)?[\w.-]+:(?!\\)")  # git@github.com:acme/fleet.git
_BAD_REF = re.compile(r"(^-|^/|/$|\.\.|[\s:~^?*\[\\]|@\{|\.lock$|^$)")


def _credentials_in(repo: str) -> bool:
    """A password, or any user part of an http(s) URL (where tokens go: https://<token>@host/...). A bare user
    name of an ssh URL (ssh://git@host/..., git@host:...) is no credential."""
    match = _SCHEME_USERINFO.match(repo)
    if match is None:
        return False
    return ":" in match.group("userinfo") or match.group("scheme").lower() not in ("ssh", "git+ssh", "ssh+git")


def checked_repo(repo: str) -> str:
    """REPO as it is stored: a local path made absolute, a URL as given; refused with credentials in it."""
    if repo.startswith("-"):
        fail(f"REPO {repo!r} starts with '-'", hint="give a path or a URL")
    if _credentials_in(repo):
        shown = _SCHEME_USERINFO.sub(lambda m: f"{m.group('scheme')}://***@", repo)
        fail(f"REPO {shown} carries credentials; they would be stored in fleet.db and shown by `source show`",
             hint="use an ssh key (ssh://git@host/repo.git), a deploy key, or git's credential helper "
                  "(git config --global credential.helper store) instead")
    if os.path.exists(repo):
        return os.path.abspath(repo)
    if _SCHEME.match(repo) or _SCP_LIKE.match(repo):
        return repo
    fail(f"REPO {repo!r} is neither an existing path nor a URL",
         hint="a local repository path, or a URL such as https://host/acme/fleet.git or git@host:acme/fleet.git")
    raise AssertionError("unreachable")


def checked_ref(ref: str) -> str:
    if _BAD_REF.search(ref):
        fail(f"--ref {ref!r} is not a ref name git accepts",
             hint="a branch (main) or a full ref name (refs/tags/v1.2, refs/heads/main)")
    return ref


def checked_path(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    if not path or path.startswith(("/", "-")) or ".." in parts or re.match(r"^[A-Za-z]:", path):
        fail(f"--path {path!r} must be a relative path inside the repository",
             hint="e.g. fleet.yaml or hosts/web-1/fleet.yaml")
    return "/".join(p for p in parts if p not in ("", "."))


def checked_duration(option: str, value: str, minimum: float) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        fail(f"{option}: {exc}")
    if seconds < minimum:
        fail(f"{option} must be at least {format_duration(minimum)}; got {value}")
    return seconds


def checked_verify(verify: str, allowed_signers: Path | None, gpg_home: Path | None) -> tuple[str | None, str | None]:
    if verify not in VERIFY_MODES:
        fail(f"--verify must be one of {', '.join(VERIFY_MODES)}; got {verify!r}")
    if verify == "ssh":
        if allowed_signers is None or not allowed_signers.is_file():
            fail("--verify ssh needs --allowed-signers FILE, an existing file",
                 hint="one line per trusted key: `alice@example.com ssh-ed25519 AAAA...` (see ssh-keygen(1), "
                      "ALLOWED SIGNERS)")
        return str(allowed_signers.resolve()), None
    if verify == "gpg":
        if gpg_home is None or not gpg_home.is_dir():
            fail("--verify gpg needs --gpg-home DIR, an existing GnuPG home holding the trusted public keys",
                 hint="gpg --homedir DIR --import trusted.asc")
        return None, str(gpg_home.resolve())
    if allowed_signers is not None or gpg_home is not None:
        fail("--allowed-signers and --gpg-home need --verify ssh or --verify gpg")
    return None, None


# -- what is shown -------------------------------------------------------------------------------------

def _show_text(st: SourceStatus, now: float) -> None:
    s = st.source
    verify = {"none": "no (any commit)", "ssh": f"ssh, allowed signers {s.allowed_signers}",
              "gpg": f"gpg, keyring {s.gpg_home}"}.get(s.verify_mode, s.verify_mode)
    rows = [
        ("source", f"{s.name} ({s.kind})"), ("repository", s.url), ("ref", s.ref), ("path", s.path),
        ("interval", f"{format_duration(s.interval_s)} (timeout {format_duration(s.timeout_s)})"),
        ("verify", verify), ("empty fleet", "allowed" if s.allow_empty else "refused"),
        ("state", "SUSPENDED" if s.suspended else "following"),
    ]
    if s.suspended:
        rows.append(("suspended", f"since {when_text(s.suspended_at, now)} by {s.suspended_by or 'someone'}"
                     + (f": {s.suspend_reason}" if s.suspend_reason else "")))
    rows += [
        ("sync", st.sync.value + (f" (generation {st.generation} is newer than the source's)"
                                  if st.sync == SourceSync.OUT_OF_SYNC and s.fetched_commit == s.applied_commit
                                  else "")),
        ("fetched", f"{s.revision(s.fetched_commit) or '-'} at {when_text(s.fetched_at, now)}"),
        ("applied", (f"{s.revision(s.applied_commit)} as generation {s.applied_generation} at "
                     f"{when_text(s.applied_at, now)}") if s.applied_commit else "-"),
    ]
    if s.attempted_commit and s.attempted_commit != s.applied_commit:
        rows.append(("last commit", f"{s.revision(s.attempted_commit)}: {s.attempted_result} at "
                                    f"{when_text(s.attempted_at, now)}"))
    if s.held_commit:
        rows.append(("held", f"{s.revision(s.held_commit)} (rolled back from; a new commit or `source resume "
                             "--accept-current` applies the branch again)"))
    if s.failures:
        rows.append(("fetch", f"FAILING, {s.failures} in a row since {when_text(s.last_error_at, now)}"))
    if not s.suspended:
        rows.append(("next fetch", "now (a sync is pending)" if s.sync_requested else
                     "in flight" if s.fetch_pid else when_text(s.next_attempt_at, now) if s.next_attempt_at else "now"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        echo(f"{key.ljust(width)}  {value}")
    if s.attempt_failed:
        echo(f"\n{s.revision(s.attempted_commit)} was NOT applied ({s.attempted_result}); "
                   f"generation {st.generation} keeps running:")
        for line in (s.attempted_error or "").splitlines():
            echo(f"  {line}")
        echo("A new commit, `hermes-fleet sync` or a changed `source set` tries again.")
    if s.failures:
        echo(f"\nThe last fetch failed: {s.last_error}")


# -- plumbing ------------------------------------------------------------------------------------------

def _state(state_dir: str | None) -> StateDir:
    return state_for(state_dir, None)


def _state_with_fleet(state_dir: str | None) -> StateDir:
    """The state directory, refusing one without a store (no source can be set there)."""
    state = _state(state_dir)
    if not state.db.exists():
        fail(f"no source is set for {state.root} (no fleet state there)", hint=NO_SOURCE_HINT)
    return state


def _need_source(store: Store, state: StateDir) -> Source:
    source = get_source(store)
    if source is None:
        fail(f"no source is set for {state.root}", hint=NO_SOURCE_HINT)
    return source


def _wake(state: StateDir, message: str = "wake") -> bool:
    return state.db.exists() and send_wake(state, message)


def _start_or_wake(state: StateDir) -> str:
    """Make sure a controller acts on the source now; what happened, in words."""
    from fleet.cli.controller_client import ensure_controller

    try:
        pid, started = ensure_controller(state)
    except RuntimeError as exc:
        fail(str(exc), EXIT_FAILED)
    send_wake(state, "sync")
    return f"controller pid {pid} {'started' if started else 'notified'}"


def _no_controller_note(state: StateDir) -> str:
    from fleet.cli.controller_client import running_controller_pid

    pid = running_controller_pid(state)
    if pid:
        send_wake(state, "sync")
        return f"controller pid {pid} notified"
    return ("no controller runs; `hermes-fleet sync` starts one, as do `hermes-fleet controller run` (foreground) "
            "and `hermes-fleet service install`")


# -- the commands --------------------------------------------------------------------------------------

@source_app.command("set")
def source_set(
    kind: str = typer.Argument(..., metavar="KIND", help="The kind of source; only git for now."),
    repo: str = typer.Argument(..., metavar="REPO", help="A local repository path, or any URL the host's git "
                               "fetches (https://, ssh://, git@host:path, file://); never with a password or "
                               "token in it: use an ssh key or git's credential helper."),
    ref: str = typer.Option("main", "--ref", help="The branch to follow, or a full ref name (refs/tags/v2, "
                            "refs/heads/release/1)."),
    path: str = typer.Option("fleet.yaml", "--path", help="The manifest's path inside the repository."),
    interval: str = typer.Option("1m", "--interval", help="How often to fetch, e.g. 30s, 1m, 1h (at least 1s; "
                                 "up to 10% later, so hosts following one repository spread out)."),
    timeout: str = typer.Option("60s", "--timeout", help="How long one fetch may take before it is killed."),
    verify: str = typer.Option("none", "--verify", help="Apply only commits signed by a trusted key: ssh (with "
                               "--allowed-signers) or gpg (with --gpg-home); none applies any commit."),
    allowed_signers: Path | None = typer.Option(None, "--allowed-signers", metavar="FILE",
                                                help="--verify ssh: the allowed-signers file of the trusted keys."),
    gpg_home: Path | None = typer.Option(None, "--gpg-home", metavar="DIR",
                                         help="--verify gpg: the GnuPG home holding the trusted public keys."),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="Let a commit without profiles drain the "
                                     "fleet (refused by default, as `apply` refuses it)."),
    start: bool = typer.Option(True, "--start/--no-start", help="Start a controller if none runs (default), so "
                               "the branch is followed at once."),
    output: str = OutputOption,
    state_dir: str | None = StateDirOption,
) -> None:
    """Follow a git branch: the controller applies each new commit of its manifest.

    From now on the controller fetches REF of REPO every --interval (and at once on
    `hermes-fleet sync`, for a post-receive hook or a webhook relay), reads --path at the
    fetched commit, validates it exactly as `apply` does, and records it as a new
    generation (revision `main@sha1:<commit>`, applied by `source default`). A commit that
    does not validate, or whose plan `apply` would refuse, is not applied: the fleet keeps
    running its last good generation and `source show` says why, with file:line:col.

    While the source is followed, `apply -f` is refused (one writer): `source suspend`
    first, or `apply --force`, which suspends the source. Setting it again changes the
    configuration and fetches at once; suspension and history are kept.

    Exit: 0 set, 1 no controller could be started, 2 invalid arguments.
    """
    check_output(output)
    if kind != "git":
        fail(f"unknown source kind {kind!r}; only git is supported", hint="hermes-fleet source set git REPO ...")
    signers, gnupg = checked_verify(verify, allowed_signers, gpg_home)
    config = SourceConfig(
        name=DEFAULT_SOURCE, kind=kind, url=checked_repo(repo), ref=checked_ref(ref), path=checked_path(path),
        interval_s=checked_duration("--interval", interval, MIN_INTERVAL),
        timeout_s=checked_duration("--timeout", timeout, 1.0), verify_mode=verify, allowed_signers=signers,
        gpg_home=gnupg, allow_empty=allow_empty)
    state = _state(state_dir)
    store = open_store(state, write=True)
    try:
        before, after = set_source(store, config, by=who(), at=time.time())
        changed = before is None or before.config_digest != after.config_digest
        store.journal("source_set", f"source {config.name}: follows {config.ref} of {config.url} ({config.path}) "
                      f"every {format_duration(config.interval_s)}" + ("" if changed else " (unchanged)"),
                      data={"source": config.name, "changed": changed})
    finally:
        store.close()
    note = _start_or_wake(state) if start else _no_controller_note(state)
    if output == "json":
        emit_json({"format_version": "1.0", "kind": "source_set", "changed": changed,
                   "source": source_json(SourceStatus(after, 0)), "controller": note})
    else:
        echo(f"source {config.name}: follows {config.ref} of {config.url} ({config.path}) every "
                   f"{format_duration(config.interval_s)}" + ("" if changed else " (unchanged)"))
        if after.suspended:
            echo("the source is SUSPENDED: `hermes-fleet source resume` follows it")
        echo(f"{note}; `hermes-fleet source show` says what it fetched and applied")
    raise Exit(EXIT_OK)


@source_app.command("show")
def source_show(output: str = OutputOption, state_dir: str | None = StateDirOption) -> None:
    """The source, what was fetched, attempted and applied, and why a commit was not.

    Exit: 0 nothing failed (in sync, fetching, or suspended), 1 a failure is shown (the
    last commit was not applied: invalid, refused, unverified or missing, with
    file:line:col; or the fetches fail), 2 no source is set or an error.
    """
    check_output(output)
    state = _state(state_dir)
    st = _read_status(state)
    if st is None:
        fail(f"no source is set for {state.root}", hint=NO_SOURCE_HINT)
    if output == "json":
        emit_json({"format_version": "1.0", "kind": "source", "source": source_json(st)})
    else:
        _show_text(st, time.time())
    raise Exit(EXIT_FAILED if st.failing else EXIT_OK)


@source_app.command("suspend")
def source_suspend(
    reason: str | None = typer.Option(None, "--reason", help="Why, for whoever looks next (`source show`, `status`)."),
    state_dir: str | None = StateDirOption,
) -> None:
    """Stop following the branch; the fleet keeps running its current generation.

    While suspended, `apply -f` works again. `source resume` follows the branch again and
    applies its current commit. Exit: 0 suspended (or already), 2 no source is set.
    """
    state = _state_with_fleet(state_dir)
    store = open_store(state, write=True)
    try:
        source = _need_source(store, state)
        done = suspend_source(store, source.name, reason=reason, by=who(), at=time.time())
        if done:
            store.journal("source_suspended", f"source {source.name} suspended" + (f": {reason}" if reason else ""),
                          data={"source": source.name, "reason": reason})
    finally:
        store.close()
    _wake(state)
    if done:
        echo(f"source {source.name} suspended; the fleet keeps its generation, `apply -f` works again, "
                   f"`hermes-fleet source resume` follows {source.ref} again")
    else:
        echo(f"source {source.name} was already suspended (since {when_text(source.suspended_at, time.time())} by "
                   f"{source.suspended_by or 'someone'})")


@source_app.command("resume")
def source_resume(
    accept_current: bool = typer.Option(False, "--accept-current",
                                        help="Also apply the commit a rollback rolled back from, if the branch "
                                             "is still there."),
    state_dir: str | None = StateDirOption,
) -> None:
    """Follow the branch again: fetch at once and apply its current commit.

    Whatever was applied locally meanwhile (`apply -f`, `apply --force`) is replaced by the
    branch's commit. After a `rollback`, the commit rolled back from is held: the branch's
    next commit is applied, not that one again, unless --accept-current.
    Exit: 0 resumed (or was not suspended), 2 no source is set.
    """
    state = _state_with_fleet(state_dir)
    store = open_store(state, write=True)
    try:
        source = _need_source(store, state)
        resume_source(store, source.name, accept_current=accept_current)
        if source.suspended:
            store.journal("source_resumed", f"source {source.name} resumed", data={"source": source.name})
    finally:
        store.close()
    woke = _wake(state, "sync")
    what = "resumed" if source.suspended else "was not suspended; fetching it again"
    echo(f"source {source.name} {what}: {source.ref} of {source.url}"
               + ("" if woke else "; no controller runs to follow it (`hermes-fleet sync` starts one)"))


@source_app.command("remove")
def source_remove(state_dir: str | None = StateDirOption) -> None:
    """Stop following and forget the source (its mirror too); the fleet keeps its generation.

    Exit: 0 removed, 2 no source is set.
    """
    state = _state_with_fleet(state_dir)
    store = open_store(state, write=True)
    try:
        source = _need_source(store, state)
        remove_source(store, source.name)
        store.journal("source_removed", f"source {source.name} removed ({source.ref} of {source.url})",
                      data={"source": source.name})
    finally:
        store.close()
    _wake(state)
    shutil.rmtree(state.source_mirror(source.name), ignore_errors=True)
    try:
        os.unlink(state.source_fetch_log(source.name))
    except OSError:
        pass
    echo(f"source {source.name} removed; the fleet keeps its generation and `apply -f` writes it again")


def sync(
    wait: bool = typer.Option(False, "--wait", help="Wait until the controller has fetched and handled the "
                              "branch's commit; the exit code then says how it went."),
    timeout: str = typer.Option("60s", "--timeout", help="How long --wait waits."),
    output: str = OutputOption,
    state_dir: str | None = StateDirOption,
) -> None:
    """Ask the controller to fetch the followed branch now (for a post-receive hook or a webhook relay).

    Starts a controller if none runs. Without --wait it returns at once. Exit: 0 asked (with
    --wait: fetched, and the branch's commit is applied), 1 with --wait: the fetch failed,
    the commit was not applied, or the time ran out, 2 no source is set, 3 the source is
    suspended (`hermes-fleet source resume`).
    """
    check_output(output)
    wait_for = checked_duration("--timeout", timeout, 0.0)
    state = _state_with_fleet(state_dir)
    store = open_store(state, write=True)
    token = uuid.uuid4().hex
    try:
        source = _need_source(store, state)
        if source.suspended:
            fail(f"source {source.name} is suspended (by {source.suspended_by or 'someone'}"
                 + (f": {source.suspend_reason}" if source.suspend_reason else "") + ")", EXIT_REFUSED,
                 hint="`hermes-fleet source resume` follows it again, and fetches at once")
        request_sync(store, source.name, token, time.time())
    finally:
        store.close()
    note = _start_or_wake(state)
    if not wait:
        if output == "json":
            emit_json({"format_version": "1.0", "kind": "sync", "result": "requested", "controller": note})
        else:
            echo(f"sync requested; {note}")
        raise Exit(EXIT_OK)
    _wait_handled(state, token, wait_for, output)


def _read_status(state: StateDir) -> SourceStatus | None:
    store = Store(state.db, readonly=True)
    try:
        return source_status(store)
    finally:
        store.close()


def _wait_handled(state: StateDir, token: str, timeout: float, output: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        st = _read_status(state)
        if st is None:
            fail("the source was removed meanwhile")
        if st.source.handled_token == token or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    handled = st.source.handled_token == token
    code = EXIT_OK if handled and not st.failing else EXIT_FAILED
    if output == "json":
        emit_json({"format_version": "1.0", "kind": "sync", "result": "handled" if handled else "timed_out",
                   "source": source_json(st)})
    elif not handled:
        echo(f"error: the controller did not answer the sync within {format_duration(timeout)}", err=True)
    else:
        for line in source_summary(st, time.time()):
            echo(line)
    raise Exit(code)
