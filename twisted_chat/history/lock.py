"""Who holds a history database: the lock a running server keeps on its file.

A server takes it when its store opens (``twistd chat`` refuses to start on
a database another server holds) and keeps it until the store has closed;
``twisted-chat-admin`` takes it for as long as an offline change writes, and
refuses while a server holds it. Readers (replays, backups, the ``sqlite3``
shell) never need it: SQLite's own locking keeps them safe.

It is a BSD ``flock`` on the database file itself, with a descriptor of its
own. On Linux such locks are independent of the POSIX locks SQLite takes
(the file must be on a local filesystem, as WAL mode needs anyway). The
descriptor is closed only once this process's SQLite connections to the file
are closed or were never opened: closing any descriptor of a file drops the
process's POSIX locks on it.
"""

import errno
import fcntl
import os

from .interface import HistoryError


class DatabaseBusy(HistoryError):
    """Another process (a running server, or an admin change) holds the database."""


def acquire(path: str) -> int:
    """Take the lock on the database file ``path`` (created empty if missing,
    as SQLite would); return its descriptor, for :func:`release`. Raises
    :class:`DatabaseBusy` if another process holds it, HistoryError if the
    file cannot be opened."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise HistoryError(f"cannot open it ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise DatabaseBusy("another twisted-chat server, or twisted-chat-admin, is "
                               "using it") from None
        raise HistoryError(f"cannot lock it ({e.strerror})") from None
    return fd


def release(fd: int) -> None:
    """Let go of a lock taken by :func:`acquire`."""
    os.close(fd)

