"""Manifest dataclasses, defaults, spec_hash, loading and schema validation."""
