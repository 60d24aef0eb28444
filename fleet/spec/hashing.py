"""Canonical JSON and the versioned spec hash (the restart trigger).

The digests come from CPython's own SHA-256, the one `hashlib` falls back to without OpenSSL: `hashlib` loads
OpenSSL first, ~3 ms and ~3.5 MiB resident in every process that hashes a spec (the controller hashes every spec
it decodes). The digest is the same; only throughput differs, and a spec is a few hundred bytes. For the same
reason tokens are compared with the operator module's constant-time comparison, the one `hmac` uses without
OpenSSL."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

SPEC_HASH_VERSION = "v1"


def canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str | bytes) -> str:
    """The SHA-256 of `text` (a string as UTF-8), in hex."""
    return _sha256(text.encode("utf-8") if isinstance(text, str) else text).hexdigest()


def same_secret(given: bytes, expected: bytes) -> bool:
    """Whether a presented token equals the expected one, in a time that does not tell where they differ."""
    return bool(_compare_digest(given, expected))


def spec_hash_of(restart_relevant: dict) -> str:
    return f"{SPEC_HASH_VERSION}:{sha256_hex(canonical_json(restart_relevant))}"


def hash_version(spec_hash: str) -> str:
    return spec_hash.split(":", 1)[0] if ":" in spec_hash else ""


def _builtin(candidates: tuple[tuple[str, str], ...], fallback: tuple[str, str]) -> Callable[..., Any]:
    """The first (module, name) of `candidates` this interpreter has built in, else `fallback`'s."""
    for module, name in (*candidates, fallback):
        try:
            found: Callable[..., Any] | None = getattr(__import__(module), name, None)
        except ImportError:
            continue
        if found is not None:
            return found
    raise ImportError(f"no {fallback[1]} in {fallback[0]}")  # pragma: no cover - the fallback is standard


_sha256 = _builtin((("_sha2" if sys.version_info >= (3, 12) else "_sha256", "sha256"),), ("hashlib", "sha256"))
_compare_digest = _builtin((("_operator", "_compare_digest"),), ("hmac", "compare_digest"))
