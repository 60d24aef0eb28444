"""Every OS difference lives here, behind fleet.platform.base.Platform."""

from __future__ import annotations

import os


def current_platform():
    if os.name == "nt":
        from fleet.platform.windows import WindowsPlatform
        return WindowsPlatform()
    from fleet.platform.posix import PosixPlatform
    return PosixPlatform()
