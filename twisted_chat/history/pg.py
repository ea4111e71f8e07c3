"""The PostgreSQL history store: ``--db postgresql://USER@HOST/DBNAME``.

The same store as :class:`.sqlite.SQLiteHistory`, whose batching it
inherits unchanged: the messages of a reactor turn are one batch, written in
ONE transaction, and their ``done`` callbacks run in order once it has
committed; saves of rooms go in line with the batches; batches are bounded
and pipelined, and too long a backlog pauses input (``on_pressure``). Only
the database work differs:

* Writes run on a thread of their own (a one-thread pool) with a
  connection of their own; reads (replays, ``/history``, the rooms at start)
  on another thread and connection, so a slow read never delays a commit.
  psycopg's C layer (the ``binary`` package) and the waits on the server
  release the GIL (docs/performance.rst, "PostgreSQL history": why threads
  and not psycopg's asyncio API).
* A batch takes its ids by raising the one row of ``message_ids`` in its
  transaction: ids are consecutive within a batch, increase in commit order
  (the row stays locked until the commit) and are never reused.
* A batch is one ``INSERT ... SELECT FROM unnest(arrays)``: one statement
  and one round trip for the whole batch, whatever its size.
* When PostgreSQL cannot be reached, the batch in hand fails (its senders
  get ``not-stored``) and the connection is dropped; the next request
  connects again, so the server recovers by itself once the database is
  back. Opening at start is the exception: a database that cannot be
  reached or used then stops the server with one line saying why.

The schema is versioned like the SQLite one (``schema/pg/vN.sql``), each
missing version applied at start in one transaction with its version bump,
under an advisory lock so that two servers starting together do not both
upgrade.
"""

import re
from select import POLLIN, poll
from typing import Dict, List, Optional
from urllib.parse import urlsplit, urlunsplit

from twisted.application.service import Service
from twisted.internet.defer import succeed
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from . import schema as sqlite_schema
from . import sqlite as _sqlite
from .interface import HistoryError, IHistoryStore, IRoomStore, RoomRecord, StoredMessage, is_default

SCHEMES = ("postgresql", "postgres")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Batches handed to the write thread before the first is answered: the next
# batch is already queued when a commit returns, so the thread never waits
# for a reactor turn (docs/performance.rst, "PostgreSQL history").
MAX_IN_FLIGHT = 2
CONNECT_TIMEOUT = 5  # seconds; a connection attempt to a host that does not answer
# pg_advisory_xact_lock key held while the schema is checked and upgraded
# ("chat" in ASCII).
_UPGRADE_LOCK = 0x63686174
_INSTALL = "pip install 'twisted-chat[cluster]'"


def is_url(db: str) -> bool:
    """Whether ``--db`` looks like a URL (SCHEME://...) rather than a file."""
    return _URL.match(db) is not None


def is_postgres(db: str) -> bool:
    match = _URL.match(db)
    return match is not None and match.group(1).lower() in SCHEMES


def check(db: str) -> None:
    """Cheap start-up check of a URL ``--db``: its scheme, and psycopg.

    Raises HistoryError saying why it cannot be used; connects to nothing."""
    match = _URL.match(db)
    if match is None or match.group(1).lower() not in SCHEMES:
        scheme = match.group(1) if match else db
        raise HistoryError(f"{scheme}:// is not a database this server knows: give an SQLite "
                           f"file or postgresql://USER@HOST/DBNAME")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise HistoryError(f"PostgreSQL needs psycopg, which is not installed: {_INSTALL}")


def describe(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


# -- schema ------------------------------------------------------------------

def schema_files() -> Dict[int, str]:
    """Every shipped PostgreSQL upgrade script by version."""
    return sqlite_schema.schema_files("pg")


LATEST = max(schema_files())


def version_of(conn) -> int:
    """The schema version of the database (in its current schema); 0 for an
    empty one."""
    tables = {row[0] for row in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    if "schema_version" not in tables:
        if tables:
            raise HistoryError("it holds tables but is not a twisted-chat history database")
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return row[0] or 0


def upgrade(conn) -> int:
    """Bring the database to LATEST, each version in one transaction with
    its bump; refuse one written by a newer twisted-chat, untouched."""
    scripts = schema_files()
    while True:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_UPGRADE_LOCK,))
            current = version_of(conn)
            if current > LATEST:
                raise HistoryError(
                    f"it was written by a newer twisted-chat (schema version {current}; "
                    f"this one knows up to {LATEST})")
            if current == LATEST:
                return LATEST
            conn.execute(scripts[current + 1])  # several statements: simple query protocol
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (current + 1,))


def connect(url: str):
    """A new connection (autocommit: transactions are explicit), or
    HistoryError saying why not."""
    import psycopg

    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                               application_name="twisted-chat")
    except psycopg.Error as e:
        raise HistoryError(explain(e)) from None


def open_database(url: str):
    """Connect, create or upgrade the schema; the connection, or HistoryError."""
    import psycopg

    conn = connect(url)
    try:
        upgrade(conn)
        return conn
    except psycopg.Error as e:
        conn.close()
        raise HistoryError(explain(e)) from None
    except BaseException:
        conn.close()
        raise


def explain(error) -> str:
    """A psycopg error on one line."""
    return " ".join(str(error).split()) or type(error).__name__


# -- the store's operations (each on the thread that owns ``conn``) ----------

# The whole batch in ONE statement, so in autocommit mode one transaction and
# one round trip: the write thread waits for the network (without the GIL)
# once per batch, and takes the GIL back once. Each round trip costs a wait
# for the GIL the reactor holds while it is busy (up to the interpreter's
# switch interval, 5 ms): BEGIN, UPDATE, INSERT, COMMIT as four statements
# made the store 4 times slower under load (docs/performance.rst,
# "PostgreSQL history"). The UPDATE locks message_ids' row until the commit,
# so ids increase in commit order; a data-modifying WITH runs whether or
# not the query reads it.
_WRITE = (
    "WITH ids AS (UPDATE message_ids SET last = last + %(n)s RETURNING last - %(n)s AS first),"
    " inserted AS (INSERT INTO messages"
    " (id, kind, room, room_name, nick, target, text, action, t)"
    " SELECT ids.first + u.n, u.kind, u.room, u.room_name, u.nick, u.target, u.text,"
    " u.action, u.t FROM ids, unnest(%(kind)s::text[], %(room)s::text[],"
    " %(room_name)s::text[], %(nick)s::text[], %(target)s::text[], %(text)s::text[],"
    " %(action)s::boolean[], %(t)s::float8[])"
    " WITH ORDINALITY AS u(kind, room, room_name, nick, target, text, action, t, n))"
    " SELECT first + 1 FROM ids")


def write_batch(conn, rows: List[tuple]) -> int:
    """One transaction (one statement, in autocommit mode) for the batch;
    returns the first row's id (an empty batch only checks that the
    database answers)."""
    if not rows:
        return conn.execute("SELECT last + 1 FROM message_ids").fetchone()[0]
    kinds, rooms, names, nicks, targets, texts, actions, times = zip(*rows)
    return conn.execute(_WRITE, {
        "n": len(rows), "kind": list(kinds), "room": list(rooms), "room_name": list(names),
        "nick": list(nicks), "target": list(targets), "text": list(texts),
        "action": [bool(a) for a in actions], "t": [float(t) for t in times]}).fetchone()[0]


def save_room(conn, fields: tuple) -> None:
    """Replace the room's kept state in one transaction (a default record
    only deletes it). A value the schema refuses fails the save alone."""
    record = RoomRecord(*fields)
    with conn.transaction():
        for table, column in (("room_bans", "room"), ("room_ops", "room"), ("rooms", "key")):
            conn.execute(f"DELETE FROM {table} WHERE {column} = %s", (record.key,))
        if is_default(record):
            return
        conn.execute(
            "INSERT INTO rooms (key, name, topic, topic_by, topic_t, topic_lock, moderated,"
            " invite_only, password, member_limit)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (record.key, record.name, record.topic, record.topic_by, record.topic_t,
             record.topic_lock, record.moderated, record.invite_only, record.password,
             record.limit))
        with conn.cursor() as cursor:
            if record.ops:
                cursor.executemany("INSERT INTO room_ops (room, account) VALUES (%s, %s)",
                                   [(record.key, account) for account in record.ops])
            if record.bans:
                cursor.executemany(
                    "INSERT INTO room_bans (room, position, entry, nick, set_by, t)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    [(record.key, position, *ban) for position, ban in enumerate(record.bans)])


def prune_chunk(conn, cutoff: float, chunk: int) -> int:
    """Delete up to ``chunk`` of the oldest messages older than ``cutoff``."""
    with conn.transaction():
        return conn.execute(
            "DELETE FROM messages WHERE id IN"
            " (SELECT id FROM messages WHERE t < %s ORDER BY t LIMIT %s)",
            (cutoff, chunk)).rowcount


def last_id(conn) -> int:
    return conn.execute("SELECT last FROM message_ids").fetchone()[0]


def select(conn, sql: str, params, newest: bool) -> List[StoredMessage]:
    """A read of :func:`.sqlite.page_query` (in PostgreSQL's words)."""
    return _sqlite.stored_messages(conn.execute(sql, params).fetchall(), newest)


def load_rooms(conn) -> dict:
    ops, bans = {}, {}
    for room, account in conn.execute(
            "SELECT room, account FROM room_ops ORDER BY room, account"):
        ops.setdefault(room, []).append(account)
    for room, *ban in conn.execute(
            "SELECT room, entry, nick, set_by, t FROM room_bans ORDER BY room, position"):
        bans.setdefault(room, []).append(tuple(ban))
    rooms = {}
    for row in conn.execute(
            "SELECT key, name, topic, topic_by, topic_t, topic_lock, moderated, invite_only,"
            " password, member_limit FROM rooms"):
        key = row[0]
        rooms[key] = RoomRecord(*row, tuple(ops.get(key, ())), tuple(bans.get(key, ())))
    return rooms


def messages_after(conn, after_id: int, limit: int):
    """``(last, rows)``: the last id given out, and the messages (room and
    private) whose id is above ``after_id`` and at most ``last``, oldest
    first, at most ``limit`` of them, each ``(id, record)``. One statement,
    so one snapshot: every id up to ``last`` is committed, and an id in
    that range without a row was pruned. (The cluster's catch-up,
    twisted_chat.cluster.)"""
    rows = conn.execute(
        "SELECT top.last, m.id, m.kind, m.room, m.room_name, m.nick, m.target, m.text,"
        " m.action, m.t FROM (SELECT last FROM message_ids) AS top LEFT JOIN LATERAL"
        " (SELECT * FROM messages WHERE id > %s AND id <= top.last ORDER BY id LIMIT %s) AS m"
        " ON true ORDER BY m.id", (after_id, limit)).fetchall()
    last = rows[0][0] if rows else after_id
    return last, [(row[1], tuple(row[2:])) for row in rows if row[1] is not None]


OPERATIONS = {"write": write_batch, "room": save_room, "prune": prune_chunk,
              "after": messages_after}


class _Link:
    """One connection, used by one thread at a time, made on demand: after
    a failure that broke it, the next operation connects again.

    An idle connection that PostgreSQL has closed (a restart, a stop, an
    administrator's pg_terminate_backend) has something to read: the
    server's goodbye, or the end of the stream. Such a connection is
    replaced before it is used, so the first batch after PostgreSQL came
    back is not lost to a connection that died meanwhile; it costs a
    ``select`` with no timeout, not a round trip. ``retry``: an operation
    that may run again (a read) gets one more try on a new connection when
    the connection breaks under it.
    """

    def __init__(self, url: str, conn=None, retry: bool = False):
        self.url = url
        self.conn = conn
        self.retry = retry

    def run(self, fn, *args):
        import psycopg

        if self.conn is not None and (self.conn.closed or _hung_up(self.conn)):
            self.close()
        for attempt in range(2 if self.retry else 1):
            fresh = self.conn is None
            if fresh:
                self.conn = connect(self.url)
            try:
                return fn(self.conn, *args)
            except psycopg.Error as e:
                broken = self.conn.broken or self.conn.closed
                if broken:
                    self.close()
                if not (broken and self.retry and not fresh and attempt == 0):
                    raise HistoryError(explain(e)) from None

    def close(self):
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass


def _hung_up(conn) -> bool:
    """Whether an idle connection has something to read (it should not).
    poll, not select: a busy server's descriptors go past select's 1024."""
    try:
        # (the module's select() is the history read, not select.select)
        poller = poll()
        poller.register(conn.fileno(), POLLIN)
        return bool(poller.poll(0))
    except Exception:  # no descriptor any more
        return True


class _Writer:
    """What :class:`.sqlite.SQLiteHistory` sends its writes to (in place of
    its writer process): ``request(op, *args)`` runs the operation on the
    write thread (one, so in order) and returns a Deferred of its result."""

    def __init__(self, runner, link: _Link):
        self._runner = runner
        self._link = link

    def start(self):
        pass

    def request(self, op, *args):
        return self._runner(self._link.run, OPERATIONS[op], *args)

    def close(self):
        return succeed(None)


@implementer(IHistoryStore, IRoomStore)
class PostgresHistory(_sqlite.SQLiteHistory):
    """History in a PostgreSQL database, as a service of its own.

    ``startService`` connects and creates or upgrades the schema, raising
    :class:`HistoryError` if it cannot; ``stopService`` writes what is still
    pending, then closes the connections. ``runner(fn, *args)``, if given,
    runs writes and reads alike (tests drive it by hand); otherwise writes
    and reads each get a one-thread pool.
    """

    def __init__(self, url: str, clock=None, runner=None,
                 retention_days: Optional[float] = None,
                 prune_interval: float = _sqlite.PRUNE_INTERVAL,
                 max_in_flight: int = MAX_IN_FLIGHT):
        super().__init__(url, clock=clock, runner=runner, retention_days=retention_days,
                         prune_interval=prune_interval)
        self.max_in_flight = max_in_flight
        self._pools = []
        self._write_link: Optional[_Link] = None
        self._read_link: Optional[_Link] = None

    def startService(self):
        conn = open_database(self.path)  # HistoryError tells the operator why
        try:
            self.last_id_at_start = last_id(conn)
        except Exception as e:
            conn.close()
            raise HistoryError(explain(e)) from None
        self._write_link = _Link(self.path, conn)
        self._read_link = _Link(self.path, retry=True)
        # What the inherited code checks for "open" (pruning goes on chunk
        # after chunk while it is set).
        self._conn = self._write_link
        write_runner = read_runner = self._runner
        if self._runner is None:
            write_runner, read_runner = self._pool_runner("write"), self._pool_runner("read")
        self._runner = read_runner
        self._writer = _Writer(write_runner, self._write_link)
        self._max_in_flight = self.max_in_flight
        Service.startService(self)
        if self.retention_days:
            self._pruner = LoopingCall(self.prune_expired)
            self._pruner.clock = self.clock
            self._pruner.start(self.prune_interval, now=True).addErrback(
                lambda f: self.log.failure("history pruning stopped", f))

    def _pool_runner(self, name):
        from twisted.internet import reactor
        from twisted.internet.threads import deferToThreadPool
        from twisted.python.threadpool import ThreadPool

        pool = ThreadPool(1, 1, name=f"chat-history-{name}")
        pool.start()
        self._pools.append(pool)

        def runner(fn, *args):
            return deferToThreadPool(reactor, pool, fn, *args)

        return runner

    def _close(self, result):
        # Everything pending is written (drain): join the threads once the
        # jobs queued before this are done, then close their connections.
        self._conn = None
        pools, self._pools = self._pools, []
        for pool in pools:
            pool.stop()
        for link in (self._write_link, self._read_link):
            if link is not None:
                link.close()
        return result

    def committed_after(self, after_id: int, limit: int):
        """A Deferred of :func:`messages_after` (the cluster's catch-up).

        It runs on the write thread, in line with the batches: by the time
        it fires, every batch committed before it has had its ``done``
        callbacks run, and none committed after it is in its answer."""
        return self._writer.request("after", after_id, limit)

    # -- reads, on the read thread -------------------------------------------

    def load_rooms(self):
        return self._runner(self._read_link.run, load_rooms)

    # page_query's words for PostgreSQL (see SQLiteHistory.page)
    _MARK, _MS = "%s", "trunc(t * 1000)::bigint"

    def _select(self, sql, params, newest):
        return self._read_link.run(select, sql, params, newest)


__all__ = ["PostgresHistory", "check", "describe", "is_postgres", "is_url"]
