"""A WebSocket connection is a line-protocol session in JSON mode whose
framing is WebSocket frames.

:class:`WebSocketSession` (Autobahn) does the handshake, the Origin check,
the frame and message size bounds, pings and the close handshake. Once the
socket is open it starts a :class:`WebChatProtocol`, the line face's
``ChatProtocol`` itself (rate limit, command parsing and dispatch, login,
bounded coalesced output, registration with the one ``ChatFactory``), over a
:class:`FramedTransport`: each text message in is one line, each line out is
one text frame. Nothing about rooms or commands is written twice.
"""

from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IConsumer, ITransport
from twisted.logger import Logger
from zope.interface import implementer

from ..events import JSON
from ..protocol import ChatProtocol
from .frames import FrameCache

# Default ports of the schemes a page may be served by.
_DEFAULT_PORT = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# A WebSocket message (or frame) larger than this many times --max-line
# closes the connection (1009, message too big); up to it, an over-long
# message is answered with ``line-too-long`` as on the line face, and the
# connection stays.
MESSAGE_SLACK = 2
PING_INTERVAL = 30.0  # seconds between pings of an idle socket (proxies drop silent ones)
PING_TIMEOUT = 30.0  # a pong later than this: the peer is gone


class WebChatProtocol(ChatProtocol):
    """The line face's session, speaking JSON from the first event (the page
    never asks for ``/mode json``), so its sender gets its own messages back
    with their ids."""

    initial_mode = JSON

    def connectionMade(self):
        super().connectionMade()
        if self.member is not None:
            self.member.echo = True


@implementer(ITransport, IConsumer)
class FramedTransport:
    """What the session writes, as WebSocket frames on the socket's transport.

    Everything but writing and closing is the socket's transport's own:
    peer address (per-address limits), producers (the bounded output, input
    pausing), TCP options.
    """

    def __init__(self, ws, frames):
        self._ws = ws
        self._raw = ws.transport
        self._frames = frames

    def write(self, data):
        if data:
            self._raw.write(self._frames(data))

    def writeSequence(self, seq):
        self.write(b"".join(seq))

    def loseConnection(self):
        self._ws.close_socket()

    def abortConnection(self):
        self._raw.abortConnection()

    def getPeer(self):
        return self._raw.getPeer()

    def getHost(self):
        return self._raw.getHost()

    def registerProducer(self, producer, streaming):
        self._raw.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self._raw.unregisterProducer()

    def __getattr__(self, name):
        # pauseProducing, resumeProducing, setTcpNoDelay, getHandle...
        return getattr(self._raw, name)


class WebSocketSession(WebSocketServerProtocol):
    # Not ``log``: that is Autobahn's own (txaio) logger, which drops its
    # debug chatter; a twisted Logger there would print every frame.
    _log = Logger()
    chat = None  # the WebChatProtocol once the socket is open

    def onConnect(self, request):
        if not self.factory.origin_allowed(request.headers.get("origin"),
                                           request.headers.get("host", "")):
            self._log.info("web socket from {peer} refused: origin {origin!r}",
                          peer=request.peer, origin=request.headers.get("origin"))
            raise ConnectionDeny(403, "origin not allowed")
        return None  # no subprotocol

    def onOpen(self):
        chat = self.chat = WebChatProtocol()
        chat.factory = self.factory.chat
        chat.makeConnection(FramedTransport(self, self.factory.frames))

    def onMessage(self, payload, isBinary):
        chat = self.chat
        if chat is None:
            return
        if isBinary:
            # sendClose() takes only 1000 and 3000-4999 (codes for
            # applications); failing the connection is how Autobahn
            # itself closes with a protocol code.
            self._fail_connection(self.CLOSE_STATUS_CODE_UNSUPPORTED_DATA, "text frames only")
            return
        # One message is one line: CR and LF are control characters, which
        # the line protocol strips from text anyway.
        chat.dataReceived(payload.translate(None, b"\r\n") + b"\n")

    def close_socket(self):
        """The session is done: close handshake (after what is queued)."""
        if self.state == self.STATE_OPEN:
            self.sendClose(self.CLOSE_STATUS_CODE_NORMAL)
        elif self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        chat, self.chat = self.chat, None
        if chat is not None:
            chat.connectionLost(reason)


class WebSocketFactory(WebSocketServerFactory):
    """Builds a :class:`WebSocketSession` per socket, for one ``ChatFactory``
    (the one the line face uses: one hub, one turn, one set of limits)."""

    protocol = WebSocketSession

    def __init__(self, chat, origins=()):
        super().__init__(server="twisted-chat")
        self.chat = chat
        self.frames = FrameCache()
        self.origins = {_origin(o) for o in origins if o != "*"}
        self.any_origin = "*" in origins
        limit = chat.max_line * MESSAGE_SLACK + 64
        self.setProtocolOptions(
            maxFramePayloadSize=limit, maxMessagePayloadSize=limit,
            autoPingInterval=PING_INTERVAL, autoPingTimeout=PING_TIMEOUT,
            openHandshakeTimeout=10, closeHandshakeTimeout=2,
            webStatus=False, tcpNoDelay=True, trustXForwardedFor=0, failByDrop=False,
        )

    def origin_allowed(self, origin, host):
        """A browser always sends Origin: it must be this page's own origin
        (the Host the socket was asked for) or one of ``--web-origin``.
        Without one (not a browser: a bot, a load generator) there is no
        other site's page to protect from.

        The Host header names no scheme: the origin's fills in its default
        port. One listener serves one scheme, so an origin naming this host
        and port is this server's page."""
        if origin is None or self.any_origin:
            return True
        try:
            theirs = _origin(origin)
            ours = _origin(f"{theirs[0]}://{host}")
        except ValueError:
            return False
        return theirs == ours or theirs in self.origins


def _origin(text):
    """(scheme, host, port) of an origin or URL, default ports filled in;
    ValueError if it is not one."""
    parts = urlsplit(text.strip().lower())
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an origin: {text!r}")
    return scheme, parts.hostname, parts.port or _DEFAULT_PORT[scheme]
