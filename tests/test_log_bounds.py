"""A gateway's log and its rotations stay within their bound however the log was rotated."""

from fleet.execute.logs import FLOOD_SLACK, rotate_if_large, trim_running

CAP = 64 * 1024


def _flooded(path, size: int) -> bytes:
    data = b"".join(b"line %08d\n" % i for i in range(size // 14 + 1))[:size]
    path.write_bytes(data)
    return data


def test_a_log_a_flood_left_unwatched_is_cut_when_rotated_at_a_spawn(tmp_path):
    log = tmp_path / "alpha.log"
    data = _flooded(log, 5 * (CAP + FLOOD_SLACK))
    assert rotate_if_large(str(log), max_bytes=CAP, keep=3)
    rotated = (tmp_path / "alpha.log.1").read_bytes()
    # The newest bytes, up to the end of the last whole line (a line is 14 bytes here).
    assert CAP + FLOOD_SLACK - 14 < len(rotated) <= CAP + FLOOD_SLACK and rotated.endswith(b"\n")
    assert data[:data.rindex(b"\n") + 1].endswith(rotated), "the newest whole lines are kept"
    assert not log.exists() or log.stat().st_size == 0


def test_a_log_just_over_its_cap_is_rotated_whole_at_a_spawn(tmp_path):
    log = tmp_path / "alpha.log"
    data = _flooded(log, CAP + 10)
    assert rotate_if_large(str(log), max_bytes=CAP, keep=3)
    assert (tmp_path / "alpha.log.1").read_bytes() == data and not log.exists()
    assert not rotate_if_large(str(log), max_bytes=CAP, keep=3)


def test_repeated_floods_and_respawns_never_exceed_the_bound(tmp_path):
    log = tmp_path / "alpha.log"
    keep = 3
    for round_ in range(8):
        _flooded(log, (round_ + 2) * CAP)
        rotate = rotate_if_large if round_ % 2 else trim_running
        assert rotate(str(log), max_bytes=CAP, keep=keep)
    files = sorted(tmp_path.glob("alpha.log*"))
    assert len(files) <= keep + 1
    assert sum(f.stat().st_size for f in files) <= keep * (CAP + FLOOD_SLACK) + CAP


def test_a_copy_truncate_ends_at_a_line_so_no_line_is_torn(tmp_path):
    log = tmp_path / "alpha.log"
    log.write_bytes(b"one\ntwo\nthree, still being writ")
    assert trim_running(str(log), max_bytes=1, keep=3)
    assert (tmp_path / "alpha.log.1").read_bytes() == b"one\ntwo\n"
    assert log.read_bytes() == b""
    log.write_bytes(b"a single line with no end yet")  # nothing to cut at: kept as it is
    assert trim_running(str(log), max_bytes=1, keep=3)
    assert (tmp_path / "alpha.log.1").read_bytes() == b"a single line with no end yet"
