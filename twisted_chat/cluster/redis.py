"""The cluster's Redis link: one connection that publishes, one that
subscribes, each kept up by Twisted's ``ClientService`` (it reconnects with
a capped backoff after a restart or an outage).

The Redis protocol is txredisapi's (with hiredis's parser when installed),
the client Synapse's workers use for the same job. Only its protocols are
used, with a factory of our own: the reconnecting is ClientService's, so
what the link knows of the connections is a few attributes (``publisher``,
``subscriber``, ``subscribed``), set and cleared as connections come and go.

Redis is for notifications only: a publication lost while a connection is
down costs time, not messages (the servers catch up from PostgreSQL).

Both connections are pinged every PING_EVERY seconds. A subscriber only
listens, so without it a silent cut (a half-open connection: a dead
machine, a dropped route, a stopped Redis) would never be noticed: the
server would go on believing itself subscribed, hear nobody, and judge
every other server gone. txredisapi has ``ping`` and a per-command
``replyTimeout`` (which aborts the connection) but no keepalive of its own;
a ping unanswered for REPLY_TIMEOUT seconds drops the connection, and
ClientService makes another.
"""

from typing import Callable, Optional

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

import txredisapi

from ..delivery import directwrite

log = Logger()

# Seconds without an answer before a connection is dropped (and made again).
REPLY_TIMEOUT = 5.0
# Seconds between keepalive pings on each connection: a silent cut is
# noticed within PING_EVERY + REPLY_TIMEOUT, well before another server
# would be judged gone (members.DEAD_AFTER).
PING_EVERY = 5.0
# Reconnection: at once, then backing off, but never more than this apart.
RETRY_MAX = 2.0


class _Subscriber(txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern, channel, message):
        self.factory.link._received(message)

    def connectionLost(self, why):
        super().connectionLost(why)
        self.factory.link._lost(self, "subscriber")


class _SendAtOnce:
    """The publisher's transport, whose ``write`` sends into the idle socket
    at once (:mod:`twisted_chat.delivery.directwrite`) instead of on the next
    reactor turn: a server publishes its commits in the turn that fans
    them out to its own members, and a buffered publication would wait
    behind that whole fan-out (thousands of sends) before it leaves for the
    other servers. Everything else is the transport's."""

    def __init__(self, transport, write):
        self._transport = transport
        self.write = write

    def __getattr__(self, name):
        return getattr(self._transport, name)


class _Publisher(txredisapi.RedisProtocol):
    def makeConnection(self, transport):
        write = directwrite.writer(transport)
        if write is not None:
            transport = _SendAtOnce(transport, write)
        super().makeConnection(transport)

    def connectionLost(self, why):
        super().connectionLost(why)
        self.factory.link._lost(self, "publisher")


class _Factory(Factory):
    """What txredisapi's protocols ask of their factory, and no more: the
    connection is ClientService's to keep, not theirs."""

    isLazy = True
    noisy = False

    def __init__(self, link, protocol):
        self.link = link
        self.protocol = protocol

    def buildProtocol(self, addr):
        p = self.protocol(charset="utf-8", replyTimeout=REPLY_TIMEOUT)
        p.factory = self
        return p

    def stopTrying(self):
        pass

    def connectionError(self, why):
        log.warn("redis: {why}", why=why)


class RedisLink(MultiService):
    """Publish on ``channel`` and hear what every server publishes there.

    ``received(text)`` is called with each publication (this server's own
    included); ``subscribed()`` each time the subscription is (re)made,
    which is when a server that was cut off catches up.
    """

    def __init__(self, endpoint, channel: str, received: Callable[[str], None],
                 subscribed: Callable[[], None], description: str = "redis"):
        super().__init__()
        self.channel = channel
        self.description = description
        self._received_cb = received
        self._subscribed_cb = subscribed
        self.publisher: Optional[_Publisher] = None
        self.subscriber: Optional[_Subscriber] = None
        self.subscribed = False
        self.published = 0
        self.dropped = 0  # publications made while no connection was up
        retry = backoffPolicy(initialDelay=0.1, maxDelay=RETRY_MAX)
        ClientService(endpoint, _Factory(self, _Publisher), retryPolicy=retry,
                      prepareConnection=self._publisher_made).setServiceParent(self)
        ClientService(endpoint, _Factory(self, _Subscriber), retryPolicy=retry,
                      prepareConnection=self._subscriber_made).setServiceParent(self)
        self._keepalive = LoopingCall(self._ping)

    def startService(self):
        super().startService()
        self._keepalive.start(PING_EVERY, now=False)

    def stopService(self):
        if self._keepalive.running:
            self._keepalive.stop()
        return super().stopService()

    def _ping(self):
        for p in (self.publisher, self.subscriber):
            if p is not None and p.connected:
                # Unanswered, replyTimeout aborts the connection (and fails
                # this Deferred): _lost and ClientService do the rest.
                p.ping().addErrback(lambda failure: None)

    # -- connections -----------------------------------------------------------

    def _publisher_made(self, p):
        def ready(p):
            self.publisher = p
            log.info("redis: publishing on {where}", where=self.description)
        return p.whenConnected().addCallback(ready)

    def _subscriber_made(self, p):
        def subscribe(p):
            self.subscriber = p
            return p.subscribe(self.channel)

        def ready(_):
            if not p.connected:
                return
            self.subscribed = True
            log.info("redis: subscribed to {channel} on {where}", channel=self.channel,
                     where=self.description)
            self._subscribed_cb()
        return p.whenConnected().addCallback(subscribe).addCallback(ready)

    def _lost(self, p, which):
        if which == "publisher":
            if self.publisher is p:
                self.publisher = None
                log.warn("redis: publisher connection lost; reconnecting")
        else:
            if self.subscriber is p:
                self.subscriber = None
            if not self.subscribed:
                return
            self.subscribed = False
            log.warn("redis: subscription lost; reconnecting (catching up from the "
                     "database meanwhile)")

    # -- traffic ---------------------------------------------------------------

    def publish(self, text: str) -> bool:
        """Publish ``text``; False when no connection is up (nothing is sent:
        the others will find it in the database)."""
        p = self.publisher
        if p is None or not p.connected:
            self.dropped += 1
            return False
        self.published += 1
        p.publish(self.channel, text).addErrback(self._publish_failed)
        return True

    def _publish_failed(self, failure):
        self.dropped += 1
        log.warn("redis: a publication failed: {error}", error=failure.getErrorMessage())

    def _received(self, message):
        try:
            self._received_cb(message)
        except Exception:
            log.failure("redis: handling a publication")
