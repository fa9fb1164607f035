"""Per-folder locks for bank jobs: kernel locks on objects that deleting a file cannot take away.

* The folder lock is `fcntl.flock` on the bank DIRECTORY itself (an `O_RDONLY` descriptor of it): `rm` of any
  file inside cannot release or duplicate it, and the kernel drops it when the holder dies (even by kill -9), so
  a crash never leaves a stale lock. Whole-bank jobs (a build without shards, merge, prepare) hold it
  exclusively; shard builds share it and each also holds its own shard lock exclusively.
* A shard lock is `flock` on `.ld-augment.<shard>.lock` (whose inode is checked after locking: a file deleted
  and recreated meanwhile is locked again) AND a Linux abstract socket named after the folder's inode and the
  shard: it lives in the kernel, not the file system, so deleting the lock file does not let a second build of
  the same shard in.
* `.ld-augment.lock` only records who holds the folder (pid, its start time from /proc/<pid>/stat, job) for the
  refusal message; a holder whose pid is gone or reused is reported as such, never trusted by pid alone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ld_augment.errors import LdAugmentError

LOCK_FILE = ".ld-augment.lock"
METADATA_LOCK_FILE = ".ld-augment.metadata.lock"
_NO_DIR_LOCKS = {errno.EBADF, errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP}


class BankLockedError(LdAugmentError):
    """Another process holds the bank folder (or shard) this job needs."""


def process_start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (/proc/<pid>/stat field 22); None if it is not running.
    Together with the pid it names one process: a pid reused after the holder died has another start time."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        return int(text.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _holder_record(job: str) -> bytes:
    pid = os.getpid()
    return json.dumps({"pid": pid, "start_ticks": process_start_ticks(pid), "job": job,
                       "started": time.time()}).encode()


def _holder(path: Path) -> str:
    """Who the record at `path` names, checked against the running processes (pid AND start time)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)) if isinstance(started, (int, float)) else "?"
    ticks = process_start_ticks(pid)
    if ticks is None or (info.get("start_ticks") is not None and ticks != info.get("start_ticks")):
        return f"another process (the last recorded holder, pid {pid}, has exited)"
    return f"pid {pid} ({info.get('job', 'a bank job')}, started {when})"


def _refusal(folder: Path, record: Path, what: str = "") -> BankLockedError:
    return BankLockedError(f"{folder}{what} is in use by {_holder(record)}; wait for it to finish "
                           f"(a dead holder's lock is released automatically)")


def _write_record(path: Path, job: str, fd: int | None = None) -> None:
    """Best effort: the record only feeds refusal messages, the lock itself never depends on it."""
    own = fd is None
    try:
        if own:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_record(job), 0)
    except OSError:
        pass
    finally:
        if own and fd is not None:
            os.close(fd)


@contextmanager
def bank_lock(folder: str | os.PathLike, *, job: str, shared: bool = False,
              check: Callable[[], Any] | None = None) -> Iterator[Path]:
    """Hold the bank folder for the block; refuse at once (no waiting) if someone else holds it.

    The folder must exist. `shared=True` (shard builds) still excludes every exclusive holder. `check` runs
    after the lock is taken and before anything is written (the holder record): a foreign folder is refused
    untouched, and the loser of a race for a new folder hears "in use", not "foreign".
    """
    folder = Path(folder)
    try:
        fd = _flock_folder(folder, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
    except BlockingIOError:
        raise _refusal(folder, folder / LOCK_FILE) from None
    try:
        held = folder if stat.S_ISDIR(os.fstat(fd).st_mode) else folder / LOCK_FILE
        if not _same_file(held, fd):
            raise BankLockedError(f"{held} was replaced while this job was locking it; run it again")
        if check is not None:
            check()
        _write_record(folder / LOCK_FILE, job)  # with shared holders the latest one is named
        yield folder / LOCK_FILE
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _same_file(path: Path, fd: int) -> bool:
    """`path` still names the inode `fd` holds (not deleted, not replaced)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def _flock_folder(folder: Path, mode: int) -> int:
    """A descriptor holding flock `mode` on the folder itself; BlockingIOError if someone else holds it.
    File systems that cannot flock a directory (NFS emulates flock with POSIX locks, which need a writable
    descriptor) fall back to the record file, as before (deleting that file is then not guarded against)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return fd
    except OSError as exc:
        os.close(fd)
        if isinstance(exc, BlockingIOError) or exc.errno not in _NO_DIR_LOCKS:
            raise
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def _lock_file_held(path: Path) -> int | None:
    """flock(LOCK_EX|LOCK_NB) on `path`, retried while the file is deleted or replaced under us; the
    descriptor, or None if another process holds it."""
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if _same_file(path, fd):
            return fd
        os.close(fd)  # we locked an orphan inode: take the one the path names now
    raise BankLockedError(f"{path}: the lock file keeps being replaced; is another program deleting it?")


def _abstract_socket(folder: Path, name: str) -> socket.socket | None:
    """A socket bound in Linux's abstract namespace under (folder's device and inode, name): a name no file
    operation can remove. None where abstract sockets do not exist (not Linux); the file lock still holds."""
    if not hasattr(socket, "AF_UNIX") or not os.path.isdir("/proc"):
        return None
    st = os.stat(folder)
    address = f"\0ld-augment-bank:{st.st_dev}:{st.st_ino}:{name}".encode()[:107]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise
        return None
    return sock


@contextmanager
def shard_lock(folder: str | os.PathLike, name: str, *, job: str) -> Iterator[Path]:
    """Hold shard `name` of the bank folder exclusively (inside the shared folder lock)."""
    folder = Path(folder)
    path = folder / f".ld-augment.{name}.lock"
    fd = _lock_file_held(path)
    if fd is None:
        raise _refusal(folder, path, f" (shard {name})")
    try:
        try:
            sock = _abstract_socket(folder, name)
        except OSError:  # EADDRINUSE: a holder whose lock file was deleted from under it
            raise BankLockedError(f"{folder} (shard {name}) is in use by another process whose lock file "
                                  f"{path.name} was deleted while it held it; wait for that build to finish") from None
        try:
            _write_record(path, job, fd)
            yield path
        finally:
            if sock is not None:
                sock.close()
    finally:
        os.close(fd)


@contextmanager
def metadata_lock(folder: str | os.PathLike) -> Iterator[None]:
    """A short blocking lock around a read-compute-write of dataset.json or bank.json, so concurrent shards
    never publish a numTraining computed before another shard's newer one."""
    path = Path(folder) / METADATA_LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _same_file(path, fd):
            break
        os.close(fd)  # deleted while we waited: lock the file the path names now
    try:
        yield
    finally:
        os.close(fd)
