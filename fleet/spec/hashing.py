"""Canonical JSON and the versioned spec hash (the restart trigger)."""

from __future__ import annotations

import json

SPEC_HASH_VERSION = "v1"


def canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    import hashlib  # loading OpenSSL is ~2 ms that a `down` or a `status` of undecoded specs never needs

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def spec_hash_of(restart_relevant: dict) -> str:
    return f"{SPEC_HASH_VERSION}:{sha256_hex(canonical_json(restart_relevant))}"


def hash_version(spec_hash: str) -> str:
    return spec_hash.split(":", 1)[0] if ":" in spec_hash else ""
