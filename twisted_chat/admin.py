"""``twisted-chat-admin``: an operator's commands on a server's files.

::

    twisted-chat-admin backup chat.sqlite /backups/chat-2026-12-02.sqlite
    twisted-chat-admin rooms chat.sqlite
    twisted-chat-admin accounts accounts.passwd

``backup`` copies the history database with SQLite's online backup API while
the server runs and writes: the copy is one consistent snapshot (a read
transaction; in WAL mode the server's writer goes on beside it), so it holds
every message acknowledged before the backup started. The copy is written
beside DEST under a temporary name, switched out of WAL mode (one
self-contained file), checked with ``PRAGMA integrity_check`` and only then
renamed to DEST. ``rooms`` and ``accounts`` only read.

Errors are one line on standard error and exit status 1 (2 for bad usage),
never a traceback: a missing or foreign file, a database locked by another
program for longer than ``--timeout``, a DEST that exists.
"""

import argparse
import datetime
import os
import sqlite3
import sys
import tempfile

from . import passwords
from .history import HistoryError, schema

PROG = "twisted-chat-admin"
DEFAULT_TIMEOUT = 5.0


class AdminError(Exception):
    """What went wrong, for a person; the command exits 1 with it."""


def _uri(path: str, mode: str) -> str:
    from urllib.parse import quote

    return f"file:{quote(os.path.abspath(path))}?mode={mode}"


def open_database(path: str, timeout: float) -> sqlite3.Connection:
    """An existing twisted-chat history database, opened without creating,
    upgrading or writing anything."""
    if not os.path.exists(path):
        raise AdminError(f"{path} does not exist")
    if not os.path.isfile(path):
        raise AdminError(f"{path} is not a file")
    try:
        # mode=rw, not ro: a reader of a WAL database needs its -shm file,
        # which a read-only connection could not create if the server is not
        # running. Nothing here writes.
        conn = sqlite3.connect(_uri(path, "rw"), uri=True, timeout=timeout,
                               isolation_level=None)
    except sqlite3.Error as e:
        raise AdminError(f"cannot open {path}: {_why(e)}") from None
    try:
        version = schema.version_of(conn)
    except sqlite3.Error as e:
        conn.close()
        raise AdminError(f"cannot read {path}: {_why(e)}") from None
    except HistoryError as e:  # tables, but not ours
        conn.close()
        raise AdminError(f"{path}: {e}") from None
    if version == 0:
        conn.close()
        raise AdminError(f"{path} is not a twisted-chat history database (it is empty)")
    if version > schema.LATEST:
        conn.close()
        raise AdminError(f"{path} was written by a newer twisted-chat (schema version "
                         f"{version}; this one knows up to {schema.LATEST})")
    return conn


def _why(error: sqlite3.Error) -> str:
    message = str(error)
    if "locked" in message or "busy" in message:
        return (f"the database is locked by another program ({message}); try again, "
                f"or give --timeout more seconds")
    if "not a database" in message or "malformed" in message:
        return f"it is corrupt or not an SQLite database ({message})"
    return message


# -- backup -------------------------------------------------------------------

def backup(source: str, dest: str, timeout: float = DEFAULT_TIMEOUT) -> int:
    """Copy the database ``source`` to ``dest`` (which must not exist);
    return the number of messages in the copy."""
    if os.path.exists(dest):
        raise AdminError(f"{dest} exists; give a new file name (nothing was written)")
    directory = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(directory):
        raise AdminError(f"the directory {directory} does not exist")
    src = open_database(source, timeout)
    fd, partial = tempfile.mkstemp(prefix=os.path.basename(dest) + ".", suffix=".partial",
                                   dir=directory)
    os.close(fd)
    try:
        try:
            dst = sqlite3.connect(partial, isolation_level=None)
            try:
                src.backup(dst)  # one step: one read transaction, one snapshot
                dst.execute("PRAGMA journal_mode = DELETE").fetchone()
                problems = [row[0] for row in dst.execute("PRAGMA integrity_check")]
                if problems != ["ok"]:
                    raise AdminError(f"the copy fails its integrity check: "
                                     f"{'; '.join(problems[:5])}")
                count = dst.execute("SELECT count(*) FROM messages").fetchone()[0]
            finally:
                dst.close()
        except sqlite3.Error as e:
            raise AdminError(f"cannot back up {source}: {_why(e)}") from None
        finally:
            src.close()
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        if os.path.exists(dest):
            raise AdminError(f"{dest} appeared meanwhile; the backup was not kept")
        os.replace(partial, dest)
        partial = None
        _fsync_directory(directory)
        return count
    finally:
        if partial is not None:
            for suffix in ("", "-journal", "-wal", "-shm"):
                try:
                    os.unlink(partial + suffix)
                except FileNotFoundError:
                    pass


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- listings -----------------------------------------------------------------

def rooms(path: str, timeout: float = DEFAULT_TIMEOUT):
    """[(room name, messages, last message time or None)], by folded name."""
    conn = open_database(path, timeout)
    try:
        return conn.execute(
            "SELECT (SELECT room_name FROM messages AS n WHERE n.room = m.room"
            "        ORDER BY id DESC LIMIT 1),"
            " count(*), max(t) FROM messages AS m WHERE room IS NOT NULL"
            " GROUP BY room ORDER BY room").fetchall()
    except sqlite3.Error as e:
        raise AdminError(f"cannot read {path}: {_why(e)}") from None
    finally:
        conn.close()


def accounts(path: str):
    """[(name, scrypt parameters)] of an account file, by name."""
    try:
        found = passwords.read_accounts(path)
    except FileNotFoundError:
        raise AdminError(f"{path} does not exist") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise AdminError(f"cannot read {path}: {e}") from None
    listed = []
    for key in sorted(found):
        name, encoded = found[key]
        ln, r, p, _, _ = passwords.parse_hash(encoded)
        listed.append((name, f"scrypt ln={ln},r={r},p={p}"))
    return listed


def _when(t) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def _table(rows, out) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(str(cell).ljust(width)
                            for cell, width in zip(row, widths)).rstrip() + "\n")


# -- the command ---------------------------------------------------------------

def main(argv=None, out=None) -> int:
    out = sys.stdout if out is None else out
    parser = argparse.ArgumentParser(
        prog=PROG, description="Operate a twisted-chat server's files: back up its history "
        "database while it runs, list its rooms and accounts (docs/operations.rst).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def with_timeout(p):
        p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help="how long to wait for a database another program has locked "
                            f"(default {DEFAULT_TIMEOUT:g})")
        return p

    p = with_timeout(commands.add_parser(
        "backup", help="copy the history database, even while the server runs",
        description="Copy the history database DB to DEST (a new file) with SQLite's online "
                    "backup API: a consistent snapshot, taken while the server goes on "
                    "writing; checked with PRAGMA integrity_check before it is kept."))
    p.add_argument("db", metavar="DB", help="the server's --db file (chat.sqlite)")
    p.add_argument("dest", metavar="DEST", help="the backup file to create")
    p = with_timeout(commands.add_parser(
        "rooms", help="list the rooms of the history database",
        description="List the rooms that have messages in DB: name, messages kept, "
                    "the time of the last one."))
    p.add_argument("db", metavar="DB", help="the server's --db file (chat.sqlite)")
    p = commands.add_parser(
        "accounts", help="list the accounts of an account file",
        description="List the accounts of FILE (as made by twisted-chat-passwd): names and "
                    "hash parameters, never the hashes.")
    p.add_argument("file", metavar="FILE", help="the account file (--auth chat-passwd:FILE)")
    args = parser.parse_args(argv)
    try:
        if args.command == "backup":
            count = backup(args.db, args.dest, args.timeout)
            out.write(f"backed up {args.db} to {args.dest}: {count} messages, "
                      f"integrity check ok\n")
        elif args.command == "rooms":
            listed = rooms(args.db, args.timeout)
            if not listed:
                out.write("no rooms with messages\n")
            else:
                _table([("ROOM", "MESSAGES", "LAST MESSAGE")]
                       + [(name, count, _when(t)) for name, count, t in listed], out)
        elif args.command == "accounts":
            listed = accounts(args.file)
            if not listed:
                out.write("no accounts\n")
            else:
                _table([("NAME", "HASH")] + listed, out)
    except AdminError as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
