"""Listeners behind a TCP load balancer that sends the PROXY protocol header
(HAProxy's ``send-proxy``): ``--port haproxy:tcp:5000``, and the same for
``--irc`` and ``--web``.

Behind a balancer every connection comes from the balancer's address, so
per-address limits (``--max-per-ip``), bans by address and the logs would
all see one client. The balancer can say who the client is in a header
before the first byte of the connection (PROXY protocol v1 or v2). Twisted
parses it (``twisted.protocols.haproxy``, the ``haproxy:`` endpoint), but
connects the wrapped protocol at once, before the header has arrived: the
chat's ``connectionMade`` would still read the balancer's address. Here
the chat's protocol is connected once the header has been read, so that
everything it does with the peer's address uses the client's; a
connection that sends no valid header within HEADER_TIMEOUT seconds is
closed without ever reaching the chat. Writes go straight to the TCP
transport underneath (:func:`.delivery.directwrite.under`).
"""

from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
# Twisted's PROXY wrapper is public only through proxyEndpoint(), which
# cannot delay the wrapped protocol's connection: its class is subclassed.
from twisted.protocols.haproxy._wrapper import (HAProxyProtocolWrapper,
                                                HAProxyWrappingFactory)
from zope.interface import directlyProvides, implementer, providedBy

HEADER_TIMEOUT = 10.0  # seconds a connection has to send its PROXY header

log = Logger()


class _Early:
    """Stands in for the chat's protocol while the header is parsed: keeps
    what came after the header in the same read."""

    def __init__(self):
        self.data = []

    def dataReceived(self, data):
        self.data.append(data)


class HeaderFirst(HAProxyProtocolWrapper):
    """Twisted's PROXY wrapper, connecting the chat's protocol only once
    the header is read."""

    # Its writes and producer calls go straight to the transport under it
    # (see twisted_chat.delivery.directwrite.under).
    writes_through = True
    _timeout = None
    _chat_connected = False

    def makeConnection(self, transport):
        # ProtocolWrapper.makeConnection, but the wrapped protocol waits.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._timeout = self.factory.clock.callLater(HEADER_TIMEOUT, self._no_header)

    def dataReceived(self, data):
        if self._chat_connected:
            return self.wrappedProtocol.dataReceived(data)
        chat, early = self.wrappedProtocol, _Early()
        self.wrappedProtocol = early  # the parent hands it what follows the header
        try:
            super().dataReceived(data)
        finally:
            self.wrappedProtocol = chat
        if self._proxyInfo is None or self.disconnecting:
            return  # more to come, or a bad header (the parent closes the connection)
        self._timeout.cancel()
        self._chat_connected = True
        chat.makeConnection(self)
        for chunk in early.data:
            if self.disconnecting or not self._chat_connected:
                break
            chat.dataReceived(chunk)

    def loseConnection(self):
        if not self._chat_connected and not self.disconnecting:
            log.info("{peer}: no valid PROXY header: closed",
                     peer=_where(self.transport.getPeer()))
        super().loseConnection()

    def _no_header(self):
        log.info("{peer}: no PROXY header in {s:g} s: closed",
                 peer=_where(self.transport.getPeer()), s=HEADER_TIMEOUT)
        self.transport.abortConnection()

    def connectionLost(self, reason):
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        if self._chat_connected:
            self._chat_connected = False
            super().connectionLost(reason)
        else:
            self.factory.unregisterProtocol(self)


class HeaderFirstFactory(HAProxyWrappingFactory):
    protocol = HeaderFirst
    noisy = False  # no "Starting factory" line: the listener is announced already

    def __init__(self, wrappedFactory, clock=None):
        super().__init__(wrappedFactory)
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock


@implementer(IStreamServerEndpoint)
class ProxyHeaderEndpoint:
    """Listens on ``endpoint``; each connection's first bytes are a PROXY
    header naming the client, then the chat's protocol starts."""

    def __init__(self, endpoint, clock=None):
        self._endpoint = endpoint
        self._clock = clock

    def listen(self, factory):
        return self._endpoint.listen(HeaderFirstFactory(factory, self._clock))


def _where(address):
    host = getattr(address, "host", None)
    return f"{host}:{address.port}" if host is not None else str(address)
