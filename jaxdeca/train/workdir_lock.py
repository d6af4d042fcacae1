"""One job at a time in a workdir: an exclusive lock on `<workdir>/.jaxdeca.lock`.

Two runs on one workdir (a resubmitted job, a second terminal) used to go ahead together: each
deleted the other's half-written checkpoints (orbax's `<step>.orbax-checkpoint-tmp` has no
per-process name), so both crashed with a FileNotFoundError, or both "finished" while only one
run's weights were kept and TensorBoard drew two runs' events as one. The second job is now
refused with a `WorkdirInUse` (a ConfigError: one 'error:' line) naming the running one.

The lock is the OS's `flock` on an open file, so the OS drops it when its process ends, however
it ends: a killed run leaves no stale lock and resumes as before. Where `flock` is not available
(some network file systems) or the workdir is a URL (gs://), nothing is locked, with a warning
for the former. In a multi-process run only process 0 takes it.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time

from absl import logging

from jaxdeca.train import paths

LOCK_NAME = ".jaxdeca.lock"
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


class WorkdirInUse(paths.ConfigError):
    """Another job holds the workdir's lock."""


@contextlib.contextmanager
def hold(workdir: str, take: bool = True):
    """Holds `workdir`'s lock for the body (nothing when `take` is false or workdir is a URL).

    Raises WorkdirInUse when another process holds it; the message names that process (pid,
    host, start time, as it wrote them into the lock file)."""
    if not take or paths.is_url(workdir):
        yield
        return
    paths.makedirs(workdir)
    path = os.path.join(workdir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a folder this user cannot write to, a read-only disk
        raise paths.ConfigError(f"--workdir={workdir}: cannot write its lock file {path} "
                                f"({e.strerror or e})") from None
    try:
        locked = _try_lock(fd, path, workdir)
        if locked:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (a later job opens the same one)


def _try_lock(fd: int, path: str, workdir: str) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno not in _BUSY:  # ENOSYS, ENOLCK: a file system without flock
            logging.warning("cannot lock %s (%s): a second job started on this workdir would not be "
                            "refused", path, e.strerror or e)
            return False
    holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "its process is not named yet"
    raise WorkdirInUse(f"--workdir={workdir} is in use by another job ({holder}; lock file {path}): wait "
                       "for it to end, or give this job another workdir")
