"""The cluster's order: every server lets messages out in id order.

PostgreSQL gives the ids (``message_ids``, raised in each batch's
transaction): they are consecutive, increase in commit order and a failed
batch takes none, so the ids of the whole cluster have no holes but pruned
ones. A server holds each message, its own and the others', until every
lower id has gone out; so a room's messages carry the same ids and go out in
the same order on every server.

Messages of other servers come by Redis, usually within a millisecond of
their commit. When a lower id is missing for longer than ``gap_wait`` (a
publication lost to a Redis restart, a server killed between its commit and
its publication), or when Redis is not there at all, the sequencer reads
what it misses from the database (``fetch(after_id, limit)``, which answers
in line with this server's own commits: see
:meth:`~twisted_chat.history.pg.PostgresHistory.committed_after`). An id seen twice
(Redis and the database, or a publication repeated) goes out once.
"""

from typing import Callable, Dict

from twisted.logger import Logger

log = Logger()

GAP_WAIT = 0.5  # seconds a missing id is waited for before reading the database
FETCH_LIMIT = 1000  # messages read at once when catching up
_SKIP = (None, None)  # an id without a message (pruned): nothing goes out


class Sequencer:
    """Lets messages out in id order, from ``last + 1`` on.

    ``local(id, record, done)``: this server's own message, committed; its
    ``done(id)`` (the hub's delivery) runs at its turn. ``remote(id,
    record)``: another server's; ``deliver(id, record)`` runs at its turn.
    """

    def __init__(self, last: int, deliver: Callable[[int, tuple], None], fetch, clock,
                 gap_wait: float = GAP_WAIT):
        self.last = last  # the highest id let out
        self.deliver = deliver
        self.fetch = fetch  # (after_id, limit) -> Deferred of (last, [(id, record)])
        self.clock = clock
        self.gap_wait = gap_wait
        self.waiting: Dict[int, tuple] = {}  # id -> (done or None, record or None)
        self._gap_call = None
        self._fetching = False
        self._again = False
        self.caught_up = 0  # messages that came from the database, not Redis
        self.fetches = 0

    def local(self, msg_id: int, record: tuple, done: Callable[[int], None]) -> None:
        if msg_id <= self.last or msg_id in self.waiting:
            # Cannot happen (the database answers in line with our commits);
            # if it did, the hub still waits for this one.
            log.warn("cluster: own message {id} came after its turn", id=msg_id)
            done(msg_id)
            return
        self.waiting[msg_id] = (done, record)
        self._release()

    def remote(self, msg_id: int, record: tuple) -> None:
        if msg_id <= self.last or msg_id in self.waiting:
            return  # had it already
        self.waiting[msg_id] = (None, record)
        self._release()

    def _release(self) -> None:
        waiting = self.waiting
        while waiting:
            entry = waiting.pop(self.last + 1, None)
            if entry is None:
                break
            self.last += 1
            done, record = entry
            try:
                if done is not None:
                    done(self.last)
                elif record is not None:
                    self.deliver(self.last, record)
            except Exception:
                log.failure("cluster: delivering message {id}", id=self.last)
        if waiting:
            if self._gap_call is None:
                self._gap_call = self.clock.callLater(self.gap_wait, self._gap, self.last)
        elif self._gap_call is not None:
            self._gap_call.cancel()
            self._gap_call = None

    def _gap(self, last_then: int) -> None:
        self._gap_call = None
        if self.waiting:
            if self.last == last_then:
                self.catch_up()  # the hole is still there
            else:
                # It moved on, but something is still missing: wait again.
                self._gap_call = self.clock.callLater(self.gap_wait, self._gap, self.last)

    def catch_up(self) -> None:
        """Read from the database whatever came after ``last``."""
        if self._fetching:
            self._again = True
            return
        self._fetching = True
        self.fetches += 1
        after = self.last
        d = self.fetch(after, FETCH_LIMIT)
        d.addCallbacks(self._fetched, self._fetch_failed, callbackArgs=(after,))

    def _fetched(self, answer, after: int) -> None:
        self._fetching = False
        top, rows = answer
        for msg_id, record in rows:
            if msg_id > self.last and msg_id not in self.waiting:
                self.waiting[msg_id] = (None, record)
                self.caught_up += 1
        # Every id up to ``upto`` is committed: one without a row was pruned.
        upto = rows[-1][0] if len(rows) >= FETCH_LIMIT else top
        for msg_id in range(max(self.last, after) + 1, upto + 1):
            self.waiting.setdefault(msg_id, _SKIP)
        self._release()
        if self._again or len(rows) >= FETCH_LIMIT:
            self._again = False
            self.catch_up()

    def _fetch_failed(self, failure) -> None:
        self._fetching = False
        self._again = False
        log.warn("cluster: catching up from the database failed: {error}",
                 error=failure.getErrorMessage())
        # The gap timer (or the next poll) tries again.
        if self.waiting and self._gap_call is None:
            self._gap_call = self.clock.callLater(self.gap_wait, self._gap, self.last)

    def stop(self) -> None:
        if self._gap_call is not None:
            self._gap_call.cancel()
            self._gap_call = None

    @property
    def held(self) -> int:
        """Messages waiting for a lower id."""
        return len(self.waiting)

    def __repr__(self) -> str:
        return f"<Sequencer last={self.last} waiting={sorted(self.waiting)[:5]}>"


__all__ = ["Sequencer", "GAP_WAIT", "FETCH_LIMIT"]
