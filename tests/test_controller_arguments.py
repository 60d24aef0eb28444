"""The controller's command line: the usual invocations are read without argparse, and mean what argparse reads."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.controller.__main__ import arguments, usual_arguments

WORDS = st.sampled_from(["--held", "--state-dir", "--state-dir=", "--state-dir=/s", "--state-dir=-x", "/s", "s",
                         "-x", "", "--state", "--help", "--hel", "-h", "--state-dir=a=b", "--", "-1"])


def argparse_reading(argv: list[str]) -> tuple[str | None, bool] | None:
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            args = arguments().parse_args(argv)
    except SystemExit:
        return None
    return args.state_dir, args.held


@settings(max_examples=400, deadline=None)
@given(argv=st.lists(WORDS, max_size=5))
def test_what_the_fast_reading_accepts_means_what_argparse_reads(argv):
    fast = usual_arguments(argv)
    if fast is not None:
        assert fast == argparse_reading(argv), argv


@pytest.mark.parametrize("argv, expected", [
    (["--state-dir", "/s"], ("/s", False)),
    (["--state-dir", "/s", "--held"], ("/s", True)),
    (["--held", "--state-dir=/s"], ("/s", True)),
    ([], (None, False)),
])
def test_the_invocations_apply_and_the_services_write_are_read_without_argparse(argv, expected):
    assert usual_arguments(argv) == expected


@pytest.mark.parametrize("argv", [["--help"], ["--state", "/s"], ["--state-dir"], ["--state-dir", "-x"],
                                  ["--held", "--held"], ["--state-dir", "/a", "--state-dir", "/b"], ["extra"]])
def test_anything_else_goes_to_argparse(argv):
    assert usual_arguments(argv) is None


def test_a_usual_start_does_not_load_argparse():
    code = ("import sys\nfrom fleet.controller.__main__ import usual_arguments\n"
            "usual_arguments(['--state-dir', '/s', '--held'])\n"
            "print(sorted(m for m in ('argparse', 'gettext', 'locale') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_help_and_usage_errors_still_come_from_argparse():
    help_text = subprocess.run([sys.executable, "-m", "fleet.controller", "--help"], capture_output=True, text=True,
                               timeout=60)
    assert help_text.returncode == 0 and "--state-dir" in help_text.stdout
    wrong = subprocess.run([sys.executable, "-m", "fleet.controller", "--state-dir"], capture_output=True, text=True,
                           timeout=60)
    assert wrong.returncode == 2 and "expected one argument" in wrong.stderr
