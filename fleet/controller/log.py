"""The controller's log line: stamped, with its pid, secrets masked."""

from __future__ import annotations

import os
import sys
import time

from fleet.spec.secrets import mask_text


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
    try:
        print(f"{stamp} hermes-fleet[{os.getpid()}] {mask_text(message)}", file=sys.stderr, flush=True)
    except OSError:
        pass  # a full disk under the log must not stop the supervision
