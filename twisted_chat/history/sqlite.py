"""The SQLite history store: group commit off the reactor thread.

Every message the hub accepts during one reactor turn is collected; at the
end of the turn the whole batch is written in ONE transaction by a single
writer thread, and only after the commit are the batch's ``done`` callbacks
called, in order, on the reactor thread (that is when the hub echoes and
broadcasts). While a batch is being written, later turns' messages pile up
into the next batch, so the cost of a commit (an fsync) is shared by however
many messages arrived meanwhile: throughput grows with load instead of being
capped at the disk's fsync rate.

Ids are assigned inside the writer's transaction (one past the highest id
ever used), so they are the rows' ids, consecutive within a batch, and
increase in acceptance order. Reads run on the same single thread, queued
behind the writes, so a read sees every message whose ``done`` has run.
"""

import json
import sqlite3
from typing import Callable, List, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from . import schema
from .interface import HistoryError, IHistoryStore, StoredMessage

# Most messages, and most bytes of text, in one transaction. A batch's
# callbacks (the echoes and broadcasts) run in one reactor turn, so the batch
# is also the burst every member receives at once: capped near what one turn
# of reading brings without history (64 KiB a connection), output stays smooth
# and a reader that keeps up is never mistaken for a slow consumer.
MAX_BATCH = 2000
MAX_BATCH_BYTES = 64 * 1024
# Back-pressure: when this many messages wait for the writer, input is paused
# (``on_pressure``) until the backlog is down to LOW_WATER.
HIGH_WATER = 20000
LOW_WATER = 5000
PRUNE_CHUNK = 5000  # rows per pruning transaction: writes interleave between chunks
PRUNE_INTERVAL = 3600.0  # seconds between retention passes

_INSERT = ("INSERT INTO messages (id, kind, room, room_name, nick, target, text, action, t)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
# The whole batch in ONE statement: the rows go in as a JSON array. The
# sqlite3 module releases the GIL around each step of a statement; with
# executemany that is once per row, and the writer thread and the reactor
# thread then trade the GIL hundreds of times per batch. One step per batch
# leaves the reactor thread alone while SQLite works.
_INSERT_JSON = (
    "INSERT INTO messages (id, kind, room, room_name, nick, target, text, action, t)"
    " SELECT ? + key, json_extract(value, '$[0]'), json_extract(value, '$[1]'),"
    " json_extract(value, '$[2]'), json_extract(value, '$[3]'), json_extract(value, '$[4]'),"
    " json_extract(value, '$[5]'), json_extract(value, '$[6]'), json_extract(value, '$[7]')"
    " FROM json_each(?)")
_LAST_ID = ("SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0),"
            " coalesce((SELECT max(id) FROM messages), 0))")
_COLUMNS = "id, t, room_name, nick, text, action"


def _row(record: dict) -> tuple:
    """The columns (after id) of one hub record."""
    if record["kind"] == "message":
        return ("message", record["room"], record.get("room_name", record["room"]),
                record["nick"], None, record["text"], 1 if record.get("action") else 0,
                record["t"])
    return ("private", None, None, record["from"], record["to"], record["text"], 0,
            record["t"])


@implementer(IHistoryStore)
class SQLiteHistory(Service):
    """History in an SQLite file (or ``:memory:``), as a service of its own.

    ``startService`` opens (creating or upgrading) the database and raises
    :class:`HistoryError` if it cannot; ``stopService`` writes what is still
    pending, then closes it.

    ``runner(fn, *args)`` runs ``fn`` on the writer thread and returns a
    Deferred of its result; by default a private one-thread pool. Tests may
    pass a runner they drive by hand. ``clock`` provides ``callLater`` and
    ``seconds`` (the reactor by default).
    """

    log = Logger()

    def __init__(self, path: str, clock=None, runner=None,
                 retention_days: Optional[float] = None,
                 prune_interval: float = PRUNE_INTERVAL):
        if clock is None:
            from twisted.internet import reactor as clock
        self.path = path
        self.clock = clock
        self.retention_days = retention_days
        self.prune_interval = prune_interval
        self._runner = runner
        self._pool = None
        self._conn: Optional[sqlite3.Connection] = None
        self._rows: List[tuple] = []
        self._callbacks: List[tuple] = []  # (done, failed), parallel to _rows
        self._flush_call = None
        self._writing = False
        self._idle: List[Deferred] = []  # drain() waiters
        self._pruner = None
        self._json = False
        self._pressure = None  # (pause, resume) callables
        self._paused = False

    # -- service life ----------------------------------------------------------

    def startService(self):
        self._conn = schema.connect(self.path)  # HistoryError tells the operator why
        try:
            self._conn.execute("SELECT json_extract('[1]', '$[0]')").fetchone()
            self._json = True
        except sqlite3.OperationalError:  # an SQLite built without JSON functions
            self._json = False
        if self._runner is None:
            from twisted.internet import reactor
            from twisted.internet.threads import deferToThreadPool
            from twisted.python.threadpool import ThreadPool

            self._pool = ThreadPool(1, 1, name="chat-history")
            self._pool.start()
            pool = self._pool

            def runner(fn, *args):
                return deferToThreadPool(reactor, pool, fn, *args)

            self._runner = runner
        super().startService()
        if self.retention_days:
            self._pruner = LoopingCall(self.prune_expired)
            self._pruner.clock = self.clock
            self._pruner.start(self.prune_interval, now=True).addErrback(
                lambda f: self.log.failure("history pruning stopped", f))

    def stopService(self):
        super().stopService()
        if self._pruner is not None and self._pruner.running:
            self._pruner.stop()
        d = self.drain()
        d.addBoth(self._close)
        return d

    def _close(self, result):
        if self._pool is not None:
            # Joins the writer once the jobs queued before this are done, so
            # nothing uses the connection while it closes.
            self._pool.stop()
            self._pool = None
            self._runner = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        return result

    # -- writing ---------------------------------------------------------------

    def on_pressure(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        """Call ``pause()`` when too many messages wait for the writer, and
        ``resume()`` when it has caught up (the server stops reading input)."""
        self._pressure = (pause, resume)

    def append(self, record: dict, done: Callable[[int], None],
               failed: Optional[Callable[[], None]] = None) -> None:
        self._rows.append(_row(record))
        self._callbacks.append((done, failed))
        if len(self._rows) > HIGH_WATER and not self._paused and self._pressure:
            self._paused = True
            self.log.info("history: {n} messages wait for the disk; pausing input",
                          n=len(self._rows))
            self._pressure[0]()
        if self._flush_call is None and not self._writing:
            # End of this reactor turn: everything appended until then is one batch.
            self._flush_call = self.clock.callLater(0, self._flush)

    def _flush(self):
        self._flush_call = None
        if self._writing or not self._rows:
            return
        count, size = 0, 0
        for row in self._rows:
            count += 1
            size += len(row[5]) + 64  # text plus the event's framing
            if count >= MAX_BATCH or size >= MAX_BATCH_BYTES:
                break
        if count == len(self._rows):
            rows, callbacks = self._rows, self._callbacks
            self._rows, self._callbacks = [], []
        else:
            rows, callbacks = self._rows[:count], self._callbacks[:count]
            del self._rows[:count], self._callbacks[:count]
        self._writing = True
        d = self._runner(self._write, rows)
        d.addCallbacks(self._written, self._write_failed,
                       callbackArgs=(callbacks,), errbackArgs=(callbacks,))
        d.addBoth(self._batch_over)

    def _write(self, rows):
        """Writer thread: one transaction for the batch; returns the first id."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            first = conn.execute(_LAST_ID).fetchone()[0] + 1
            if self._json:
                conn.execute(_INSERT_JSON, (first, json.dumps(rows, ensure_ascii=False)))
            else:
                conn.executemany(_INSERT, [(first + i,) + row for i, row in enumerate(rows)])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return first

    def _written(self, first, callbacks):
        for offset, (done, _) in enumerate(callbacks):
            try:
                done(first + offset)
            except Exception:
                self.log.failure("delivering stored message {id}", id=first + offset)

    def _write_failed(self, failure, callbacks):
        self.log.error("history: could not store {n} message(s), they were not delivered: "
                       "{error}", n=len(callbacks), error=failure.getErrorMessage())
        for _, failed in callbacks:
            if failed is not None:
                try:
                    failed()
                except Exception:
                    self.log.failure("reporting a message that was not stored")

    def _batch_over(self, _):
        self._writing = False
        if self._paused and len(self._rows) <= LOW_WATER:
            self._paused = False
            self._pressure[1]()
        if self._rows:
            # Messages accepted while the last batch was being written: the
            # next batch goes at once (the reactor does its I/O meanwhile).
            self._flush()
        elif self._idle:
            waiters, self._idle = self._idle, []
            for d in waiters:
                d.callback(None)

    def drain(self) -> Deferred:
        """A Deferred that fires once everything appended so far is written."""
        if not self._rows and not self._writing:
            return succeed(None)
        d = Deferred()
        self._idle.append(d)
        if not self._writing:
            if self._flush_call is not None:
                self._flush_call.cancel()
            self._flush()
        return d

    # -- reading ---------------------------------------------------------------

    def recent(self, room: str, limit: int) -> Deferred:
        return self._runner(self._select, room, None, limit)

    def before(self, room: str, before_id: int, limit: int) -> Deferred:
        return self._runner(self._select, room, before_id, limit)

    def _select(self, room, before_id, limit):
        if before_id is None:
            cursor = self._conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE room = ? ORDER BY id DESC LIMIT ?",
                (room, limit))
        else:
            cursor = self._conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND id < ?"
                " ORDER BY id DESC LIMIT ?", (room, before_id, limit))
        rows = cursor.fetchall()
        rows.reverse()
        return [StoredMessage(id, t, name, nick, text, bool(action))
                for id, t, name, nick, text, action in rows]

    # -- retention -------------------------------------------------------------

    def prune(self, cutoff: float) -> Deferred:
        """Delete every message older than ``cutoff`` (epoch seconds), in
        chunks so that writes go on between them; fires with the count."""
        total = [0]
        result = Deferred()

        def chunk(count):
            total[0] += count
            if count < PRUNE_CHUNK or self._conn is None:
                result.callback(total[0])
            else:
                self._runner(self._prune_chunk, cutoff).addCallbacks(chunk, result.errback)

        self._runner(self._prune_chunk, cutoff).addCallbacks(chunk, result.errback)
        return result

    def _prune_chunk(self, cutoff):
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            count = conn.execute(
                "DELETE FROM messages WHERE id IN"
                " (SELECT id FROM messages WHERE t < ? ORDER BY t LIMIT ?)",
                (cutoff, PRUNE_CHUNK)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return count

    def prune_expired(self) -> Deferred:
        """One retention pass: drop messages older than ``retention_days``."""
        days = self.retention_days
        cutoff = self.clock.seconds() - days * 86400.0

        def report(count):
            if count:
                self.log.info("history: pruned {count} message(s) older than {days} day(s)",
                              count=count, days=days)
            return count

        def trouble(failure):
            self.log.error("history: pruning failed: {error}", error=failure.getErrorMessage())

        return self.prune(cutoff).addCallbacks(report, trouble)


__all__ = ["SQLiteHistory", "HistoryError"]
