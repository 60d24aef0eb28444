"""One adapter per supervisor, all behind `Adapter` (bench/adapters/base.py)."""
