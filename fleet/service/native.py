"""Native services Hermes itself installs for a profile (hermes-contract section 5): a second
supervisor for the same profile would fight ours."""

from __future__ import annotations

import os


def native_service_paths(profile: str, home_dir: str) -> list[str]:
    suffix = "" if profile == "default" else f"-{profile}"
    win_suffix = "" if profile == "default" else f"_{profile}"
    appdata = os.environ.get("APPDATA", os.path.join(home_dir, "AppData", "Roaming"))
    return [
        os.path.join(home_dir, ".config", "systemd", "user", f"hermes-gateway{suffix}.service"),
        os.path.join("/etc/systemd/system", f"hermes-gateway{suffix}.service"),
        os.path.join(home_dir, "Library", "LaunchAgents", f"ai.hermes.gateway{suffix}.plist"),
        os.path.join(appdata, "Microsoft", "Windows", "Start Menu", "Programs", "Startup", f"Hermes_Gateway{win_suffix}.vbs"),
    ]


def find_native_service(profile: str) -> str | None:
    home_dir = os.path.expanduser("~")
    for path in native_service_paths(profile, home_dir):
        if os.path.exists(path):
            return path
    return None
