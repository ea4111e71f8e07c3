"""Every write to the history database, and the process that runs them.

:func:`write_batch`, :func:`save_room` and :func:`prune_chunk` are the
store's three kinds of write. The server runs them in a child process of
its own (``python -m twisted_chat.history.writer PATH``, started by
:class:`.sqlite.SQLiteHistory` for a file database), so that SQLite's work
and the Python that feeds it run on another core and never hold the
server's GIL, which a writer thread shared with the reactor (docs/performance.rst, "Message history").

The pipe protocol (requests on stdin, replies on stdout): a frame is a
4-byte big-endian length and a :mod:`marshal`-encoded value. Requests are
``("write", rows)``, ``("room", fields)`` (a room's whole lasting state,
``tuple(RoomRecord)``) and ``("prune", cutoff, chunk)``; the server may send
several before the first reply, and they are done one at a time, in order,
each answered ``(True, result)`` or ``(False, reason)``. Everything answered
``True`` is committed with a full fsync first. The writer exits when its
stdin closes: when the server stops, or dies (``kill -9``), after finishing
the write in hand. It ignores SIGINT and SIGTERM, which a terminal or a
service manager sends the whole process group.
"""

import marshal
import signal
import sqlite3
import struct
import sys
from typing import List

from . import schema
from .interface import RoomRecord, is_default

HEADER = struct.Struct("!I")
# Rows per INSERT statement: one statement for many rows steps SQLite once
# per chunk instead of once per row; a fixed size keeps the prepared
# statement in the sqlite3 module's cache. 9 columns x 100 rows is well under
# SQLite's limit of bound parameters (32,766 since 3.32; 999 before).
CHUNK = 100
_COLUMNS = "(id, kind, room, room_name, nick, target, text, action, t)"
_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_CHUNK = f"INSERT INTO messages {_COLUMNS} VALUES " + ", ".join([_ROW] * CHUNK)
_INSERT_ONE = f"INSERT INTO messages {_COLUMNS} VALUES {_ROW}"
LAST_ID = ("SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0),"
           " coalesce((SELECT max(id) FROM messages), 0))")


def write_batch(conn: sqlite3.Connection, rows: List[tuple]) -> int:
    """One transaction for the batch; returns the first row's id.

    ``rows`` are records (``interface.room_message``...): the columns after
    ``id``. Ids are one past the highest ever used (AUTOINCREMENT's rule, so
    pruning never makes an id come back), consecutive within the batch.
    """
    with schema.immediate(conn):
        first = conn.execute(LAST_ID).fetchone()[0] + 1
        full = len(rows) - len(rows) % CHUNK
        for start in range(0, full, CHUNK):
            params = []
            for offset, row in enumerate(rows[start:start + CHUNK], first + start):
                params.append(offset)
                params.extend(row)
            conn.execute(_INSERT_CHUNK, params)
        if full < len(rows):
            conn.executemany(_INSERT_ONE, [(first + i,) + rows[i]
                                           for i in range(full, len(rows))])
    return first


def save_room(conn: sqlite3.Connection, fields: tuple) -> None:
    """Replace the room's kept state with ``fields`` (a ``RoomRecord`` as a
    plain tuple, which is what crosses the pipe), in one transaction; a
    default record only deletes it. A value the schema refuses (a flag that
    is not a boolean, a limit that is not a positive integer) fails the save
    and leaves what was kept."""
    record = RoomRecord(*fields)
    with schema.immediate(conn):
        for table, column in _ROOM_TABLES:
            conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (record.key,))
        if is_default(record):
            return
        conn.execute(
            "INSERT INTO rooms (key, name, topic, topic_by, topic_t, topic_lock, moderated,"
            " invite_only, password, member_limit) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.key, record.name, record.topic, record.topic_by, record.topic_t,
             record.topic_lock, record.moderated, record.invite_only,  # bools bind as 1/0
             record.password, record.limit))
        conn.executemany("INSERT INTO room_ops (room, account) VALUES (?, ?)",
                         [(record.key, account) for account in record.ops])
        conn.executemany(
            "INSERT INTO room_bans (room, position, entry, nick, by, t)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(record.key, position, *ban) for position, ban in enumerate(record.bans)])


_ROOM_TABLES = (("room_bans", "room"), ("room_ops", "room"), ("rooms", "key"))


def prune_chunk(conn: sqlite3.Connection, cutoff: float, chunk: int) -> int:
    """Delete up to ``chunk`` of the oldest messages older than ``cutoff``."""
    with schema.immediate(conn):
        return conn.execute(
            "DELETE FROM messages WHERE id IN"
            " (SELECT id FROM messages WHERE t < ? ORDER BY t LIMIT ?)",
            (cutoff, chunk)).rowcount


OPERATIONS = {"write": write_batch, "room": save_room, "prune": prune_chunk}


def encode(value) -> bytes:
    data = marshal.dumps(value)
    return HEADER.pack(len(data)) + data


def _read_exactly(stream, size: int) -> bytes:
    data = stream.read(size)
    return data if data is not None and len(data) == size else b""


def serve(conn: sqlite3.Connection, requests, replies) -> None:
    """Answer requests from ``requests`` on ``replies`` until end of input."""
    while True:
        header = _read_exactly(requests, HEADER.size)
        if not header:
            return
        body = _read_exactly(requests, HEADER.unpack(header)[0])
        if not body:
            return
        op, *args = marshal.loads(body)
        try:
            reply = (True, OPERATIONS[op](conn, *args))
        except Exception as e:  # the server reports it; this process carries on
            reply = (False, f"{type(e).__name__}: {e}")
        replies.write(encode(reply))
        replies.flush()


def main(argv=None) -> int:
    from .interface import HistoryError

    argv = sys.argv[1:] if argv is None else argv
    # Ctrl+C at the server's terminal, or a service manager's SIGTERM, reaches
    # the whole process group: the server then stops and writes what is
    # pending through us, so we stay until it closes our stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        conn = schema.connect(argv[0])
    except HistoryError as e:
        sys.stderr.write(f"cannot open {argv[0]}: {e}\n")
        return 1
    try:
        serve(conn, sys.stdin.buffer, sys.stdout.buffer)
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
