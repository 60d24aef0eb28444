"""Every OS difference lives here, behind fleet.platform.base.Platform."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleet.platform.base import Platform


def current_platform() -> Platform:
    if sys.platform == "win32":
        from fleet.platform.windows import WindowsPlatform
        return WindowsPlatform()
    else:
        if sys.platform == "darwin":
            from fleet.platform.macos import MacPlatform
            return MacPlatform()
        if sys.platform.startswith("linux"):
            from fleet.platform.linux import LinuxPlatform
            return LinuxPlatform()
        from fleet.platform.posix import PosixPlatform
        return PosixPlatform()
