"""Whether this process still owns its state directory, remembered once it does not."""

from __future__ import annotations

from fleet.store.fence import Fence


class FenceWatch:
    def __init__(self, fence: Fence):
        self.fence = fence
        self.why: str | None = None  # why this process no longer owns the state directory

    def breached(self) -> bool:
        # Everything on disk must still be what this process opened before it writes or signals.
        if self.why is None:
            self.why = self.fence.breach()
        return self.why is not None
