"""Where the controller serves its metrics, or why it does not: a small file it rewrites when that changes,
which `status` reads (the controller's memory is not readable from the CLI)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fleet.store.files import UnsafeFile, read_json, write_json_atomic
from fleet.store.layout import StateDir


@dataclass(frozen=True)
class EndpointState:
    """Where the controller serves its metrics (address, textfile), or the error that kept it from each."""
    listen: str = ""  # the address actually bound ("" when none)
    listen_error: str = ""
    textfile: str = ""
    textfile_error: str = ""

    @property
    def configured(self) -> bool:
        return any(asdict(self).values())


def write_endpoint_state(state: StateDir, endpoint: EndpointState) -> None:
    write_json_atomic(state.metrics_status, asdict(endpoint), durable=False)


def read_endpoint_state(state: StateDir) -> EndpointState | None:
    try:
        doc = read_json(state.metrics_status)
    except (OSError, UnsafeFile):
        return None
    if not isinstance(doc, dict):
        return None
    return EndpointState(**{k: str(doc.get(k) or "") for k in ("listen", "listen_error", "textfile",
                                                                 "textfile_error")})
