"""The SQLite history store: group commit off the reactor thread.

Every message the hub accepts during one reactor turn is collected; at the
end of the turn the whole batch is written in ONE transaction by the writer,
and only after the commit are the batch's ``done`` callbacks called, in
order, on the reactor thread (that is when the hub echoes and broadcasts).
While a batch is being written, later turns' messages pile up into the next
batch, so the cost of a commit (an fsync) is shared by however many messages
arrived meanwhile: throughput grows with load instead of being capped at the
disk's fsync rate.

For a database file the writer is a child process
(:mod:`.writer`): SQLite and the Python that feeds it run on another core
and never take the reactor's GIL. Reads run on a one-thread pool with a
connection of their own; WAL lets them go on beside the writer, and a read
sees every message whose ``done`` has run (it was committed first). For
``:memory:`` (one connection, nothing to share) and in tests that pass a
``runner``, writes and reads both run through that one runner.

Rooms' lasting state (:class:`.interface.IRoomStore`: topic, flags,
operator accounts, bans) is kept in the same file. A room save is a request
of its own, in line with the message batches (it is sent after every message
appended before it, and before any appended after it), committed in a
transaction of its own: a save that fails fails alone. The rooms are read
once, at start, through the reader.

Ids are assigned inside the writer's transaction (one past the highest id
ever used), so they are the rows' ids, consecutive within a batch, and
increase in acceptance order.
"""

import marshal
import os
import sqlite3
import sys
import time
from sys import getsizeof
from collections import deque
from typing import Callable, List, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import schema, writer
from .interface import TEXT, HistoryError, IHistoryStore, IRoomStore, RoomRecord, StoredMessage

# Most messages, and most bytes of text, in one transaction. A batch's
# callbacks (the echoes and broadcasts) run in one reactor turn, so the batch
# is also the burst every member receives at once: capped near what one turn
# of reading brings without history (64 KiB a connection), output stays smooth
# and a reader that keeps up is never mistaken for a slow consumer.
MAX_BATCH = 2000
MAX_BATCH_BYTES = 64 * 1024
# Back-pressure, in bytes of the server's memory: when the messages waiting
# for the writer (appended, not yet answered) hold more than HIGH_WATER, input
# is paused (``on_pressure``) until they are down to LOW_WATER. A waiting
# message costs its text (``sys.getsizeof``: up to 4 bytes a character) plus
# MESSAGE_COST for the objects that carry it until its commit: its record and
# callbacks here, the hub's ``_Said`` and queue entry (measured: 440 bytes).
# 10 MiB is about 20,000 short messages (what used to be the bound, by count)
# or 2,300 of 4 KiB: with max-length lines, the count bound let ~90 MB wait.
HIGH_WATER = 10 * 1024 * 1024
LOW_WATER = HIGH_WATER // 4
MESSAGE_COST = 512
MAX_IN_FLIGHT = 4  # batches handed to the writer process before its reply
PRUNE_CHUNK = 5000  # rows per pruning transaction: writes interleave between chunks
PRUNE_INTERVAL = 3600.0  # seconds between retention passes

_COLUMNS = "id, t, room_name, nick, text, action"


def page_query(mark: str, ms: str, room: str, limit: int, after_id=None, before_id=None,
               after_ms=None, before_ms=None, newest=True):
    """(SQL, parameters, newest) of :meth:`SQLiteHistory.page`'s read, for
    an engine whose parameter mark is ``mark`` and whose truncated
    milliseconds of the column ``t`` are the expression ``ms``. Rooms'
    messages are read along the (room, id) index: ids follow acceptance
    order, and so, but for a clock set back, do times."""
    where, params = [f"room = {mark}"], [room]
    for bound, op, column in ((after_id, ">", "id"), (before_id, "<", "id"),
                              (after_ms, ">", ms), (before_ms, "<", ms)):
        if bound is not None:
            where.append(f"{column} {op} {mark}")
            params.append(int(bound))
    params.append(int(limit))
    order = "DESC" if newest else "ASC"
    sql = (f"SELECT {_COLUMNS} FROM messages WHERE {' AND '.join(where)}"
           f" ORDER BY id {order} LIMIT {mark}")
    return sql, params, newest


def stored_messages(rows, newest: bool) -> List[StoredMessage]:
    """Rows of a :func:`page_query`, oldest first."""
    if newest:
        rows.reverse()
    return [StoredMessage(id, t, name, nick, text, bool(action))
            for id, t, name, nick, text, action in rows]


class _WriterProcess(ProcessProtocol):
    """The server's end of the writer process (:mod:`.writer`): requests go
    down its stdin, replies come back on its stdout in the same order.

    Started with the reactor; if it dies, what it had in hand fails with
    :class:`HistoryError` (those messages are reported not stored, nothing
    acknowledged is lost) and the next request starts a new one, at most one
    a second.
    """

    log = Logger()
    RESPAWN_DELAY = 1.0
    STOP_TIMEOUT = 30.0  # a last batch may still be committing when we stop

    def __init__(self, path: str, reactor):
        self.path = os.path.abspath(path)
        self.reactor = reactor
        self.running = False
        # (Deferred, None) per request sent, oldest first; (Deferred,
        # HistoryError) for one that could not be sent, failed in its turn.
        self._pending = deque()
        self._buffer = b""
        self._stderr = b""
        self._spawned_at = None
        self._closing = False
        self._exited: List[Deferred] = []

    def start(self):
        """Start it now rather than on the first request (which would wait
        for an interpreter to start)."""
        if not self.running and not self._closing:
            self._spawn(self.reactor.seconds())

    def request(self, *message) -> Deferred:
        if not self.running:
            if self._closing:
                return fail(HistoryError("the history writer has stopped"))
            now = self.reactor.seconds()
            if self._spawned_at is not None and now - self._spawned_at < self.RESPAWN_DELAY:
                return fail(HistoryError("the history writer is restarting"))
            self._spawn(now)
        try:
            frame = writer.encode(message)
        except ValueError as e:
            # A value marshal cannot carry: that request fails alone, and in
            # its turn, after the answers to the requests sent before it.
            refused = HistoryError(f"cannot send it to the history writer: {e}")
            if not self._pending:
                return fail(refused)
            d = Deferred()
            self._pending.append((d, refused))
            return d
        d = Deferred()
        self._pending.append((d, None))
        self.transport.write(frame)
        return d

    def _spawn(self, now):
        self._spawned_at = now
        self._buffer = self._stderr = b""
        # The child imports twisted_chat from wherever this process did, even
        # from a checkout that is on sys.path only here.
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(writer.__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self.reactor.spawnProcess(
            self, sys.executable,
            [sys.executable, "-m", "twisted_chat.history.writer", self.path],
            env=env, childFDs={0: "w", 1: "r", 2: "r"})
        self.running = True

    def outReceived(self, data: bytes):
        buffer = self._buffer + data
        header = writer.HEADER
        while len(buffer) >= header.size:
            size = header.unpack_from(buffer)[0]
            end = header.size + size
            if len(buffer) < end:
                break
            ok, result = marshal.loads(buffer[header.size:end])
            buffer = buffer[end:]
            d, _ = self._pending.popleft()
            if ok:
                d.callback(result)
            else:
                d.errback(HistoryError(result))
            while self._pending and self._pending[0][1] is not None:
                d, refused = self._pending.popleft()
                d.errback(refused)
        self._buffer = buffer

    def errReceived(self, data: bytes):
        self._stderr = (self._stderr + data)[-4096:]

    def processEnded(self, reason):
        self.running = False
        said = self._stderr.decode("utf-8", "replace").strip()
        if not self._closing or said:
            self.log.error("history: the writer process ended ({why}){said}",
                           why=reason.getErrorMessage(), said=f": {said}" if said else "")
        pending, self._pending = self._pending, deque()
        for d, refused in pending:
            d.errback(refused or HistoryError(
                f"the history writer stopped{': ' + said if said else ''}"))
        waiters, self._exited = self._exited, []
        for d in waiters:
            d.callback(None)

    def close(self) -> Deferred:
        """Close its stdin (it finishes what it has, then exits); fires on exit."""
        self._closing = True
        if not self.running:
            return succeed(None)
        d = Deferred()
        self._exited.append(d)
        self.transport.closeStdin()
        kill = self.reactor.callLater(self.STOP_TIMEOUT, self._kill)

        def exited(result):
            if kill.active():
                kill.cancel()
            return result

        return d.addBoth(exited)

    def _kill(self):
        try:
            self.transport.signalProcess("KILL")
        except Exception:  # gone meanwhile
            pass


@implementer(IHistoryStore, IRoomStore)
class SQLiteHistory(Service):
    """History in an SQLite file (or ``:memory:``), as a service of its own.

    ``startService`` opens (creating or upgrading) the database and raises
    :class:`HistoryError` if it cannot; ``stopService`` writes what is still
    pending, then closes it.

    For a file, writes go to a writer process and reads to a one-thread
    pool. ``runner(fn, *args)``, if given, runs ``fn`` (writes and reads
    alike, on the store's own connection) and returns a Deferred of its
    result: tests pass a runner they drive by hand; ``:memory:`` gets a
    one-thread pool. ``clock`` provides ``callLater`` and ``seconds`` (the
    reactor by default).
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
        self._writer: Optional[_WriterProcess] = None
        self._conn: Optional[sqlite3.Connection] = None
        self._rows: List[tuple] = []
        self._callbacks: List[tuple] = []  # (done, failed), parallel to _rows
        self._flush_call = None
        # Batches handed to the writer and not answered yet, and how many may
        # be: the writer process works on while the reactor runs a long turn,
        # so it is given the next batches before the first reply has been
        # read (replies come back in order). A runner's thread gains nothing
        # from that and keeps one, so later turns accumulate behind it.
        self._in_flight = 0
        self._max_in_flight = 1
        # Room saves wait in line with the messages: each is sent once every
        # message appended before it has been handed over (counted in rows
        # ever appended / sent), so requests reach the writer in the order
        # they were made.
        self._saves = deque()  # (rows appended before it, fields, Deferred)
        self._appended = 0
        self._sent = 0
        self._waiting = 0  # appended, neither done nor failed yet
        self._waiting_bytes = 0  # their cost in memory (see HIGH_WATER)
        self._idle: List[Deferred] = []  # drain() waiters
        self._pruner = None
        self._pressure = None  # (pause, resume) callables
        self._paused = False
        self.last_id_at_start = 0
        # For the server's metrics and health check (twisted_chat.metrics):
        # messages stored and not, reads, the last failure to store (time,
        # reason; None once a batch is stored again), and observe_batch
        # (seconds, messages), called as each batch is answered.
        self.stored = self.not_stored = self.reads = 0
        self.write_failure = None
        self.observe_batch = None

    # -- service life ----------------------------------------------------------

    def startService(self):
        self._conn = schema.connect(self.path)  # HistoryError tells the operator why
        self.last_id_at_start = self._conn.execute(writer.LAST_ID).fetchone()[0]
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
            if self.path != schema.MEMORY:
                self._writer = _WriterProcess(self.path, reactor)
                self._max_in_flight = MAX_IN_FLIGHT
                reactor.callWhenRunning(self._writer.start)
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
        stopped = self._writer.close() if self._writer is not None else succeed(None)

        def close_reader(_):
            if self._pool is not None:
                # Joins the reader once the jobs queued before this are done,
                # so nothing uses the connection while it closes.
                self._pool.stop()
                self._pool = None
                self._runner = None
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
            return result

        return stopped.addBoth(close_reader)

    # -- writing ---------------------------------------------------------------

    def on_pressure(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        """Call ``pause()`` when the messages waiting for the writer hold more
        than HIGH_WATER bytes, and ``resume()`` once they are down to LOW_WATER
        (the server stops reading input meanwhile)."""
        self._pressure = (pause, resume)

    def append(self, record: tuple, done: Callable[[int], None],
               failed: Optional[Callable[[], None]] = None) -> None:
        self._rows.append(record)
        self._callbacks.append((done, failed))
        self._appended += 1
        self._waiting += 1
        self._waiting_bytes += getsizeof(record[TEXT]) + MESSAGE_COST
        if self._waiting_bytes > HIGH_WATER and not self._paused and self._pressure:
            self._paused = True
            self.log.info("history: {n} messages ({mib:.1f} MiB) wait for the disk; "
                          "pausing input", n=self._waiting, mib=self._waiting_bytes / 1048576)
            self._pressure[0]()
        if self._flush_call is None and self._in_flight < self._max_in_flight:
            # End of this reactor turn: everything appended until then is one batch.
            self._flush_call = self.clock.callLater(0, self._flush)

    def _flush(self):
        self._flush_call = None
        while self._in_flight < self._max_in_flight:
            if self._saves and self._saves[0][0] == self._sent:
                self._send_save()
            elif self._rows:
                self._send_batch()
            else:
                break

    def _send_batch(self):
        # A batch stops before the first save waiting for it to be sent.
        most = self._saves[0][0] - self._sent if self._saves else MAX_BATCH
        count, size, cost = 0, 0, 0
        for row in self._rows:
            count += 1
            text = row[TEXT]
            size += len(text) + 64  # text plus the event's framing
            cost += getsizeof(text) + MESSAGE_COST
            if count >= most or count >= MAX_BATCH or size >= MAX_BATCH_BYTES:
                break
        self._sent += count
        if count == len(self._rows):
            rows, callbacks = self._rows, self._callbacks
            self._rows, self._callbacks = [], []
        else:
            rows, callbacks = self._rows[:count], self._callbacks[:count]
            del self._rows[:count], self._callbacks[:count]
        self._in_flight += 1
        if self._writer is not None:
            d = self._writer.request("write", rows)
        else:
            d = self._runner(self._write, rows)
        d.addCallbacks(self._written, self._write_failed,
                       callbackArgs=(callbacks,), errbackArgs=(callbacks,))
        d.addBoth(self._batch_over, len(callbacks), cost, time.perf_counter())

    def _write(self, rows):
        """The runner's thread: the batch in one transaction; the first id."""
        return writer.write_batch(self._conn, rows)

    def _written(self, first, callbacks):
        self.stored += len(callbacks)
        self.write_failure = None
        for offset, (done, _) in enumerate(callbacks):
            try:
                done(first + offset)
            except Exception:
                self.log.failure("delivering stored message {id}", id=first + offset)

    def _write_failed(self, failure, callbacks):
        self.not_stored += len(callbacks)
        self.write_failure = (self.clock.seconds(), failure.getErrorMessage())
        self.log.error("history: could not store {n} message(s), they were not delivered: "
                       "{error}", n=len(callbacks), error=failure.getErrorMessage())
        for _, failed in callbacks:
            if failed is not None:
                try:
                    failed()
                except Exception:
                    self.log.failure("reporting a message that was not stored")

    def _batch_over(self, _, count, cost, started=None):
        if started is not None and self.observe_batch is not None:
            self.observe_batch(time.perf_counter() - started, count)
        self._in_flight -= 1
        self._waiting -= count
        self._waiting_bytes -= cost
        if self._paused and self._waiting_bytes <= LOW_WATER:
            self._paused = False
            self._pressure[1]()
        if self._rows or self._saves:
            # Messages accepted while the last batch was being written: the
            # next batch goes at once (the reactor does its I/O meanwhile).
            self._flush()
        elif self._idle and not self._in_flight:
            waiters, self._idle = self._idle, []
            for d in waiters:
                d.callback(None)

    @property
    def waiting(self) -> int:
        """Messages appended and not answered yet (stored or failed)."""
        return self._waiting

    def probe(self) -> Deferred:
        """Whether the store answers: a Deferred that fires once an empty
        write transaction (it takes the database's write lock) has been done
        behind the writes already asked for, or fails saying why not."""
        if self._writer is not None:
            return self._writer.request("write", [])
        if self._runner is None:
            return fail(HistoryError("the history store is not open"))
        return self._runner(self._write, [])

    def drain(self) -> Deferred:
        """A Deferred that fires once everything appended so far is written."""
        if not self._rows and not self._saves and not self._in_flight:
            return succeed(None)
        d = Deferred()
        self._idle.append(d)
        if self._flush_call is not None:
            self._flush_call.cancel()
        self._flush()
        return d

    # -- rooms -----------------------------------------------------------------

    def save_room(self, record: RoomRecord) -> Deferred:
        """Keep ``record`` as the room's whole state (a default record
        deletes it); fires once committed, or fails with the reason (the
        messages around it are stored as usual)."""
        d = Deferred()
        # Plain tuples all through (what marshal carries to the writer
        # process; and a list of no ops would not compare as default).
        fields = tuple(record._replace(ops=tuple(record.ops),
                                       bans=tuple(map(tuple, record.bans))))
        self._saves.append((self._appended, fields, d))
        if self._flush_call is None and self._in_flight < self._max_in_flight:
            self._flush_call = self.clock.callLater(0, self._flush)
        return d

    def _send_save(self):
        _, fields, result = self._saves.popleft()
        self._in_flight += 1
        if self._writer is not None:
            d = self._writer.request("room", fields)
        else:
            d = self._runner(writer.save_room, self._conn, fields)
        d.addBoth(self._saved, result)

    def _saved(self, outcome, result):
        # The caller hears of its save first, then the next requests go (as
        # a batch's callbacks run before the next batch is sent).
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(None)
        self._batch_over(None, 0, 0)

    def load_rooms(self) -> Deferred:
        """Every kept room: a Deferred of {folded key: RoomRecord}."""
        return self._runner(self._load_rooms)

    def _load_rooms(self):
        ops, bans = {}, {}
        for room, account in self._conn.execute(
                "SELECT room, account FROM room_ops ORDER BY room, account"):
            ops.setdefault(room, []).append(account)
        for room, *ban in self._conn.execute(
                "SELECT room, entry, nick, by, t FROM room_bans ORDER BY room, position"):
            bans.setdefault(room, []).append(tuple(ban))
        rooms = {}
        for (key, name, topic, topic_by, topic_t, topic_lock, moderated, invite_only,
             password, limit) in self._conn.execute(
                "SELECT key, name, topic, topic_by, topic_t, topic_lock, moderated,"
                " invite_only, password, member_limit FROM rooms"):
            rooms[key] = RoomRecord(
                key, name, topic, topic_by, topic_t, bool(topic_lock), bool(moderated),
                bool(invite_only), password, limit, tuple(ops.get(key, ())),
                tuple(bans.get(key, ())))
        return rooms

    # -- reading ---------------------------------------------------------------

    def recent(self, room: str, limit: int) -> Deferred:
        return self.page(room, limit)

    def before(self, room: str, before_id: int, limit: int) -> Deferred:
        return self.page(room, limit, before_id=before_id)

    # page_query's words for SQLite: its parameter mark, a message's milliseconds
    _MARK, _MS = "?", "CAST(t * 1000 AS INTEGER)"

    def page(self, room: str, limit: int, after_id: Optional[int] = None,
             before_id: Optional[int] = None, after_ms: Optional[int] = None,
             before_ms: Optional[int] = None, newest: bool = True) -> Deferred:
        self.reads += 1
        query = page_query(self._MARK, self._MS, room, limit, after_id, before_id, after_ms,
                           before_ms, newest)
        return self._runner(self._select, *query)

    def _select(self, sql, params, newest):
        rows = self._conn.execute(sql, params).fetchall()
        return stored_messages(rows, newest)

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
                self._prune_chunk(cutoff).addCallbacks(chunk, result.errback)

        self._prune_chunk(cutoff).addCallbacks(chunk, result.errback)
        return result

    def _prune_chunk(self, cutoff):
        if self._writer is not None:
            return self._writer.request("prune", cutoff, PRUNE_CHUNK)
        return self._runner(writer.prune_chunk, self._conn, cutoff, PRUNE_CHUNK)

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
