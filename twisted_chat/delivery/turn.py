"""The one delivery service of a server: every face's connections register here.

A :class:`Turn` is installed into the hub once (``hub.schedule``,
``hub.call_later``) and owns what is server-wide about output:

- the end-of-turn flush: rooms with a batch fan out first, then every outlet
  that queued events writes them (one write per connection per turn);
- the registry of open connections, every face's, and the global limits
  (``--max-clients``, ``--max-per-ip``) counted over all of them;
- input back-pressure: the history store pauses and resumes reading from
  every connection;
- shutdown: ``bye`` to every connection, and a bounded wait for them to close.

A connection takes part through its :class:`~twisted_chat.delivery.outlet.Outlet`:
``admit`` it, ``dirty`` it when it has output, ``release`` it when it is gone.
"""

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger

from .. import fanout
from ..limits import DEFAULT_MAX_CLIENTS, DEFAULT_MAX_PER_IP, DEFAULT_SHUTDOWN_TIMEOUT

SHUTDOWN_REASON = "server shutting down"


class ConnectionLimits:
    """Counts live connections, in total and per peer address.

    ``admit(host)`` returns None and counts the connection, or the error code
    that refuses it; ``release(host)`` undoes a successful admit. A limit of 0
    means unlimited; a host of None (a UNIX socket peer) has no per-address
    limit.
    """

    def __init__(self, max_clients: int = DEFAULT_MAX_CLIENTS,
                 max_per_ip: int = DEFAULT_MAX_PER_IP):
        self.max_clients = max_clients
        self.max_per_ip = max_per_ip
        self.total = 0
        self.per_host = {}

    def admit(self, host):
        if self.max_clients and self.total >= self.max_clients:
            return "server-full"
        count = self.per_host.get(host, 0) if host is not None else 0
        if host is not None and self.max_per_ip and count >= self.max_per_ip:
            return "too-many-connections"
        self.total += 1
        if host is not None:
            self.per_host[host] = count + 1
        return None

    def release(self, host):
        self.total -= 1
        if host is not None:
            count = self.per_host.get(host, 0) - 1
            if count > 0:
                self.per_host[host] = count
            else:
                self.per_host.pop(host, None)


class Turn:
    """The per-turn scheduler, connection registry and global limits of one hub."""

    log = Logger()

    def __init__(self, hub, clock=None, max_clients: int = DEFAULT_MAX_CLIENTS,
                 max_per_ip: int = DEFAULT_MAX_PER_IP):
        if clock is None:
            from twisted.internet import reactor as clock
        if hub.schedule is not None:
            raise ValueError("this hub has its delivery turn already")
        self.hub = hub
        self.counts = hub.counts  # what the server did (twisted_chat.metrics)
        self.clock = clock
        self.limits = ConnectionLimits(max_clients, max_per_ip)
        self.connections = {}  # admitted outlets still open -> their peer's host
        self._dirty = []  # outlets with events queued this turn
        self._rooms = []  # rooms with a batch to flush this turn
        self._flush_call = None
        self._closed_all = None  # Deferred of a shutdown in progress
        self.input_paused = False  # see pause_input
        hub.schedule = self.dirty_room
        hub.call_later = clock.callLater  # presence batching's interval timer

    # -- the registry ----------------------------------------------------------

    def admit(self, outlet, host):
        """Count a new connection from ``host`` (None: no per-address limit):
        None once admitted, else the error code that refuses it."""
        refused = self.limits.admit(host)
        if refused is not None:
            self.counts.refused[refused] += 1
            return refused
        self.connections[outlet] = host
        if self.input_paused:
            outlet.pause_input()
        return None

    def release(self, outlet) -> None:
        """An admitted connection has closed (a second call does nothing)."""
        if outlet not in self.connections:
            return
        self.limits.release(self.connections.pop(outlet))
        if self._closed_all is not None and not self.connections:
            d, self._closed_all = self._closed_all, None
            d.callback(None)

    # -- the turn ----------------------------------------------------------------

    def dirty(self, outlet) -> None:
        """``outlet`` has events queued: flush it at the end of this turn."""
        self._dirty.append(outlet)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)

    def dirty_room(self, room) -> None:
        """The hub's ``schedule``: ``room`` has a batch to fan out this turn."""
        self._rooms.append(room)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Write out every connection's queued events: one write per connection."""
        self._flush_call = None
        # Rooms first: a member's share lands behind its direct events of
        # the turn (push appends to a pending queue) or goes out at once.
        rooms, self._rooms = self._rooms, []
        fanout.flush_all(rooms)
        dirty, self._dirty = self._dirty, []
        for outlet in dirty:
            outlet.flush()

    # -- back-pressure -------------------------------------------------------------

    def pause_input(self) -> None:
        """Stop reading from every connection: the history store is behind
        (it calls this through its ``on_pressure``) and catches up meanwhile.
        Each connection stops at once, in the middle of a read if need be
        (:meth:`Outlet.pause_input`)."""
        self.input_paused = True
        for outlet in self.connections:
            outlet.pause_input()

    def resume_input(self) -> None:
        self.input_paused = False
        for outlet in list(self.connections):
            if self.input_paused:
                break  # what a connection had read filled the store again
            outlet.resume_input()

    # -- shutdown ----------------------------------------------------------------

    def shutdown(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
                 reason: str = SHUTDOWN_REASON) -> defer.Deferred:
        """Say ``bye`` to every connection and close them all.

        The Deferred fires once every connection has closed, or after
        ``timeout`` seconds, when the stragglers (peers that do not read
        their last bytes) are aborted.
        """
        if not self.connections:
            return defer.succeed(None)
        self.log.info("shutting down: bye to {n} connections", n=len(self.connections))
        d = self._closed_all = defer.Deferred()
        for outlet in list(self.connections):
            outlet.shutdown(reason)

        def give_up():
            if self._closed_all is d:
                self.log.warn("shutdown: aborting {n} connections still open after {t:g} s",
                              n=len(self.connections), t=timeout)
                for outlet in list(self.connections):
                    outlet.abort()
                self._closed_all = None
                d.callback(None)

        call = self.clock.callLater(timeout, give_up)
        d.addBoth(lambda r: (call.cancel() if call.active() else None, r)[1])
        return d


class TurnService(MultiService):
    """The server: its children are the listeners of every face; stopping it
    closes them, then says ``bye`` to every client and waits (boundedly) for
    their connections to close before twistd lets the reactor stop."""

    def __init__(self, turn: Turn, shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT):
        super().__init__()
        self.turn = turn
        self.shutdown_timeout = shutdown_timeout

    def stopService(self):
        d = defer.maybeDeferred(super().stopService)  # no new connections
        d.addCallback(lambda _: self.turn.shutdown(self.shutdown_timeout))
        return d
