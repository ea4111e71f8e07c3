"""A server's history store when it is one of a cluster (``--redis``).

:class:`ClusterStore` stands between the hub and the PostgreSQL store; the
hub calls it as it calls any store (``append``, ``before``, ``save_room``
...), and it passes everything through but the moment a message goes out:

* this server's message, once committed, is published on Redis (the
  messages committed in one reactor turn in one publication) and handed to
  the :class:`~.sequence.Sequencer`, which runs the hub's ``done`` at its
  turn in the cluster-wide id order;
* another server's message, heard on Redis or read from the database when
  catching up, goes to the hub's :meth:`~twisted_chat.hub.Hub.deliver_remote`
  at its turn.

It also carries the presence of :mod:`.members` (joins, parts, quits,
renames, heartbeats) in the same publications, each turn's in one.

Without ``--redis`` none of this exists: the hub talks to its store directly.
"""

import json
import uuid

from twisted.application.service import Service
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from ..history.interface import TEXT, IHistoryStore, IRoomStore
from .members import HEARTBEAT, Members
from .redis import RedisLink
from .sequence import Sequencer
from .trace import Trace

log = Logger()

CHANNEL = "twisted-chat:messages"
# Seconds between checks of the database for messages Redis did not bring:
# every POLL while the subscription is down, every POLL * QUIET_POLLS while
# it is up (a server killed between its commit and its publication).
POLL = 1.0
QUIET_POLLS = 5


@implementer(IHistoryStore, IRoomStore)
class ClusterStore(Service):
    """``store`` (a started-by-us PostgresHistory) plus the Redis link and
    the order; anything not defined here is the store's (metrics, pressure,
    probes, reads)."""

    def __init__(self, store, endpoint, description: str, clock, channel: str = CHANNEL):
        self.store = store
        self.clock = clock
        self.server_id = uuid.uuid4().hex[:16]
        self.link = RedisLink(endpoint, channel, self._heard, self._subscribed, description)
        self.hub = None  # see attach()
        self.members = None
        self.sequencer = None
        self._outbox = []
        self._presence = []
        self._heartbeat = None
        self._flush_call = None
        self._poll = None
        self._ticks = 0
        # stage timestamps for the cluster benchmark (None unless asked for)
        self._trace = Trace.from_environment(self.server_id)

    def __getattr__(self, name):
        # Only for what this class does not have itself.
        if name == "store":
            raise AttributeError(name)
        return getattr(self.store, name)

    def attach(self, hub) -> None:
        """Serve ``hub``: its messages and its members, cluster-wide."""
        self.hub = hub
        self.members = Members(hub, self.server_id, self._presence_item, self.link, self.clock)

    # -- the service -------------------------------------------------------------

    def startService(self):
        self.store.startService()  # HistoryError/SystemExit: the server does not start
        self.sequencer = Sequencer(self.store.last_id_at_start, self._deliver,
                                   self.store.committed_after, self.clock)
        Service.startService(self)
        self.link.startService()
        self._poll = LoopingCall(self._check)
        self._poll.clock = self.clock
        self._poll.start(POLL, now=False)
        if self.members is not None:
            self._heartbeat = LoopingCall(self.members.heartbeat)
            self._heartbeat.clock = self.clock
            self._heartbeat.start(HEARTBEAT, now=False)

    def stopService(self):
        Service.stopService(self)
        for call in (self._poll, self._heartbeat):
            if call is not None and call.running:
                call.stop()
        d = maybeDeferred(self.store.stopService)  # writes what is pending

        def unlink(result):
            self._flush()  # what the last commits owe the others
            self.sequencer.stop()
            if self._trace is not None:
                self._trace.close()
            return self.link.stopService().addBoth(lambda _: result)

        return d.addBoth(unlink)

    # -- the store's interface -------------------------------------------------------

    def append(self, record, done, failed=None):
        self.store.append(record, lambda msg_id: self._committed(msg_id, record, done), failed)

    # -- messages --------------------------------------------------------------------

    def _committed(self, msg_id, record, done):
        self._outbox.append([msg_id, *record])
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush)
        if self._trace is not None:
            self._trace.mark("commit", (msg_id,), record[TEXT])
            done = self._traced(done)
        self.sequencer.local(msg_id, record, done)

    def _traced(self, done):
        def out(msg_id):
            self._trace.mark("out", (msg_id,))
            done(msg_id)
        return out

    def _presence_item(self, item):
        self._presence.append(item)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush)

    def _flush(self):
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self._outbox or self._presence:
            message = {"from": self.server_id}
            if self._presence:
                message["p"], self._presence = self._presence, []
            if self._outbox:
                message["m"], self._outbox = self._outbox, []
            self.link.publish(json.dumps(message, separators=(",", ":")))
            if self._trace is not None and "m" in message:
                self._trace.mark("publish", [item[0] for item in message["m"]])

    def _heard(self, text):
        message = json.loads(text)
        if message.get("from") == self.server_id or self.sequencer is None:
            return  # our own: gone out already, or on its way
        if self.members is not None:
            self.members.heard(message["from"], message.get("p", ()))
        remote = self.sequencer.remote
        items = message.get("m", ())
        if self._trace is not None and items:
            self._trace.mark("heard", [item[0] for item in items])
        for item in items:
            remote(item[0], tuple(item[1:]))

    def _subscribed(self):
        if self.sequencer is not None:
            self.sequencer.catch_up()  # what was missed while cut off
        if self.members is not None:
            self.members.subscribed()

    def _check(self):
        self._ticks += 1
        if not self.link.subscribed or self._ticks % QUIET_POLLS == 0:
            self.sequencer.catch_up()

    def _deliver(self, msg_id, record):
        if self._trace is not None:
            self._trace.mark("out", (msg_id,))
        if self.hub is not None:
            self.hub.deliver_remote(msg_id, record)


__all__ = ["ClusterStore", "CHANNEL"]
