"""The bounds of the reconcile-duration histogram's buckets (seconds).

Apart from the catalog because the controller counts every pass into them from its start, whether or not a
manifest asks for metrics, and loads the catalog only once one does."""

from __future__ import annotations

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
