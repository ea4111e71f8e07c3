"""Versioned schema of the history database: open, check and upgrade a file.

The schema lives in ``schema/vN.sql`` files shipped as package data; file N
upgrades a database from version N-1 to N. ``schema_version`` holds the
version a database is at. Opening runs the missing upgrades, each in one
transaction with its version bump, so an interrupted upgrade leaves the file
at the previous version, not half-way. A file written by a newer
twisted-chat (a version we have no file for) is refused, never touched.
"""

import contextlib
import os
import re
import sqlite3
from importlib import resources
from typing import Dict

from .interface import HistoryError

MEMORY = ":memory:"
_VERSION_FILE = re.compile(r"^v(\d+)\.sql$")


def schema_files(*folder: str) -> Dict[int, str]:
    """Every shipped upgrade script by version: {1: 'CREATE TABLE ...', ...};
    SQLite's in schema/, another engine's in schema/FOLDER (e.g. "pg")."""
    found = {}
    for entry in resources.files(__package__).joinpath("schema", *folder).iterdir():
        match = _VERSION_FILE.match(entry.name)
        if match:
            found[int(match.group(1))] = entry.read_text(encoding="utf-8")
    versions = sorted(found)
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"schema files are not v1..vN without gaps: {versions}")
    return found


LATEST = max(schema_files())


def version_of(conn: sqlite3.Connection) -> int:
    """The schema version of an open database; 0 for an empty one."""
    tables = {row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" not in tables:
        if tables - {"sqlite_sequence"}:
            raise HistoryError("it holds tables but is not a twisted-chat history database")
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return row[0] or 0


def upgrade(conn: sqlite3.Connection) -> int:
    """Bring an open database (autocommit mode) to LATEST; return the version."""
    _check_known(version_of(conn))
    scripts = schema_files()
    while True:
        with immediate(conn):
            # Read again under the write lock: another process opening the
            # same file (the writer process beside the server's reader, a
            # second server, twisted-chat-admin) may have upgraded it since.
            current = _check_known(version_of(conn))
            if current >= LATEST:
                return LATEST
            version = current + 1
            # executescript would commit first; run statement by statement so
            # the script and its version bump share one transaction.
            for statement in _statements(scripts[version]):
                conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))


def _check_known(version: int) -> int:
    if version > LATEST:
        raise HistoryError(
            f"it was written by a newer twisted-chat (schema version {version}; "
            f"this one knows up to {LATEST})")
    return version


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection):
    """One write transaction (autocommit mode): BEGIN IMMEDIATE, then COMMIT,
    or ROLLBACK if the block raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _statements(script: str):
    """Split an upgrade script into complete statements."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statement = pending.strip()
            if _meaningful(statement):
                yield statement
            pending = ""
    if _meaningful(pending.strip()):
        raise RuntimeError(f"incomplete statement in schema file: {pending!r}")


def _meaningful(statement: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--")
               for line in statement.splitlines())


def connect(path: str) -> sqlite3.Connection:
    """Open (creating if needed) and upgrade the history database at ``path``.

    The connection is in autocommit mode (we issue BEGIN/COMMIT ourselves),
    in WAL mode with full fsync at commit, and usable from one other thread
    (the store's writer). Raises HistoryError with a readable reason.
    """
    conn = None
    try:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # WAL: readers never block the writer; FULL: a commit is on disk
        # (fsync of the WAL) before we acknowledge anything.
        conn.execute("PRAGMA journal_mode = WAL").fetchone()
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA busy_timeout = 5000")
        upgrade(conn)
        return conn
    except sqlite3.Error as e:
        if conn is not None:
            conn.close()
        raise HistoryError(_explain(e)) from None
    except HistoryError:
        if conn is not None:
            conn.close()
        raise


def check(path: str) -> None:
    """Cheap start-up check of ``--db PATH``; creates nothing.

    Raises HistoryError when the file is unusable: corrupt or not SQLite,
    not readable or writable, in a missing or unwritable directory, or from
    a newer twisted-chat.
    """
    if path == MEMORY:
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise HistoryError(f"the directory {directory} does not exist")
    if not os.path.exists(path):
        if not os.access(directory, os.W_OK | os.X_OK):
            raise HistoryError(f"cannot create it: the directory {directory} is not writable")
        return
    if not os.path.isfile(path):
        raise HistoryError("it is not a regular file")
    if not os.access(path, os.R_OK | os.W_OK):
        raise HistoryError("it is not readable and writable by this user")
    if not os.access(directory, os.W_OK | os.X_OK):
        # WAL mode keeps PATH-wal and PATH-shm beside the database.
        raise HistoryError(f"its directory {directory} is not writable (WAL files live there)")
    conn = None
    try:
        conn = sqlite3.connect(f"file:{_uri_path(path)}?mode=rw", uri=True)
        version = version_of(conn)
    except sqlite3.Error as e:
        raise HistoryError(_explain(e)) from None
    finally:
        if conn is not None:
            conn.close()
    if version > LATEST:
        raise HistoryError(
            f"it was written by a newer twisted-chat (schema version {version}; "
            f"this one knows up to {LATEST})")


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))


def _explain(error: sqlite3.Error) -> str:
    message = str(error)
    if "not a database" in message or "malformed" in message:
        return f"it is corrupt or not an SQLite database ({message})"
    if "readonly" in message or "unable to open" in message:
        return f"it cannot be opened for writing ({message})"
    return message
