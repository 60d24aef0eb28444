"""psutil, loaded on first use: its import costs a `status` more than the question it answers (the platform
reads /proc itself where it can), so the modules that need it only sometimes take it from here."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def _lazy(name: str) -> ModuleType:
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"{name} is not installed (hermes-fleet depends on it: reinstall hermes-fleet)")
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


psutil = _lazy("psutil")
