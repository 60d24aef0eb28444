"""Benchmark harness for hermes-fleet against supervisord, circus and PM2 (not part of the test suite)."""
