"""Small JSON files written atomically and read without following symlinks."""

from __future__ import annotations

import json
import os

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
MAX_SMALL_FILE = 1 << 20


class UnsafeFile(Exception):
    pass


def read_small(path: str | os.PathLike, *, nofollow: bool = True) -> bytes | None:
    """Bytes of a small file; None when missing; UnsafeFile for symlinks or oversized files."""
    flags = os.O_RDONLY | (O_NOFOLLOW if nofollow else 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if nofollow and exc.errno in (40, 62):  # ELOOP: the path is a symlink
            raise UnsafeFile(f"{path} is a symlink; not followed") from None
        raise
    try:
        data = os.read(fd, MAX_SMALL_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SMALL_FILE:
        raise UnsafeFile(f"{path} is larger than {MAX_SMALL_FILE} bytes")
    return data


def read_json(path: str | os.PathLike, *, nofollow: bool = True) -> object | None:
    """Parsed JSON, None when missing or unparseable (callers treat garbage as absent)."""
    try:
        data = read_small(path, nofollow=nofollow)
    except (UnsafeFile, OSError):
        return None
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def write_atomic(path: str | os.PathLike, data: bytes, mode: int = 0o600, *, durable: bool = True) -> None:
    """Write to a temp file beside `path`, fsync, rename over it: readers see old or new, never half.
    durable=False skips the fsyncs for short-lived markers (a rename is still atomic)."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    fd, tmp = _new_temp_file(folder)
    try:
        os.fchmod(fd, mode) if hasattr(os, "fchmod") else None
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        _fsync_dir(folder)


def _new_temp_file(folder: str) -> tuple[int, str]:
    """A new file no one else has, in `folder` (what tempfile.mkstemp promises: created exclusively, not
    through a symlink, readable by its owner only), without tempfile's imports: a controller that writes a
    record every pass otherwise carries shutil and the bz2 and lzma compressors for it."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        path = os.path.join(folder, f".tmp-{os.urandom(8).hex()}")
        try:
            return os.open(path, flags, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused temporary file name in {folder}")


def write_json_atomic(path: str | os.PathLike, value: object, mode: int = 0o600, *, durable: bool = True) -> None:
    write_atomic(path, (json.dumps(value, sort_keys=True) + "\n").encode("utf-8"), mode, durable=durable)


def open_append(path: str | os.PathLike, mode: int = 0o600) -> int:
    """An O_APPEND descriptor that refuses to follow a symlink planted at `path`."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | O_NOFOLLOW, mode)


def append_line(path: str | os.PathLike, line: str) -> None:
    fd = open_append(path)
    try:
        os.write(fd, (line + "\n").encode("utf-8"))
    finally:
        os.close(fd)


def remove(path: str | os.PathLike) -> bool:
    """True when a file was removed; False when there was none, including where none can be (a path
    through a regular file), so cleaning up after a profile whose home could never exist succeeds."""
    try:
        os.unlink(path)
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except IsADirectoryError:
        raise UnsafeFile(f"{path} is a directory where a file belongs; remove it by hand") from None


def _fsync_dir(folder: str) -> None:
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
