"""A WebSocket connection is a line-protocol session in JSON mode whose
framing is WebSocket frames.

:class:`WebSocketSession` (Autobahn) does the handshake, the Origin check,
the frame and message size bounds, pings and the close handshake. Once the
socket is open it starts a :class:`WebChatProtocol`, the line face's
``ChatProtocol`` itself (rate limit, command parsing and dispatch, login,
bounded coalesced output, registration with the one ``ChatFactory``), over a
:class:`WebSocketTransport`: each text message in is one line, and its
output is rendered as frames (the ``ws-json`` and ``ws-text`` renderings of
:mod:`.frames`, a text frame per line) by a :class:`WebOutlet` writing to the
socket's own transport. So a room's share is framed once for all its
WebSocket members, and while a session's plain TCP socket is idle the
fan-out's express sends put it there in bulk with everybody else's. Nothing
about rooms or commands is written twice.
"""

from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IConsumer, ITransport
from twisted.logger import Logger
from zope.interface import implementer

from ..delivery import directwrite
from ..delivery.outlet import BoundedOutput, Outlet
from ..events import JSON
from ..protocol import ChatProtocol
from .frames import LINE_MODE, WEB_MODE, WS_JSON

# Default ports of the schemes a page may be served by.
_DEFAULT_PORT = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# A WebSocket message (or frame) larger than this many times --max-line
# closes the connection (1009, message too big); up to it, an over-long
# message is answered with ``line-too-long`` as on the line face, and the
# connection stays.
MESSAGE_SLACK = 2
PING_INTERVAL = 30.0  # seconds between pings of an idle socket (proxies drop silent ones)
PING_TIMEOUT = 30.0  # a pong later than this: the peer is gone


class WebOutlet(Outlet):
    """A session's outlet: its renderings are frames already, so its bounded
    output writes to the socket's own transport (the session's producer is
    that transport's anyway). On a plain TCP socket that is the direct
    writer and the express handle of the line face's outlets, with the same
    rules: Autobahn's own frames (pings, pongs, the close frame) queued in
    that transport clear the handle (``WebSocketSession.sendData``), and so
    does closing. Closing the connection is still the session's: the close
    handshake, through :class:`WebSocketTransport`."""

    __slots__ = ()

    def open(self, limit: int) -> None:
        self.output = BoundedOutput(self.transport.raw, limit, self._overflowed,
                                    changed=self._express)


class WebChatProtocol(ChatProtocol):
    """The line face's session, speaking JSON from the first event (the page
    never asks for ``/mode json``), so its sender gets its own messages back
    with their ids. Its modes are the line face's, framed: ``/mode text``
    and ``/mode json`` switch between ``ws-text`` and ``ws-json``."""

    initial_mode = WS_JSON
    outlet_class = WebOutlet

    @property
    def mode(self):
        """The line face's mode its output is in (JSON or TEXT), framed."""
        return JSON if self.outlet is None else LINE_MODE[self.outlet.mode]

    @mode.setter
    def mode(self, mode):
        self.outlet.set_mode(WEB_MODE[mode])

    def connectionMade(self):
        super().connectionMade()
        if self.member is not None:
            self.member.echo = True


@implementer(ITransport, IConsumer)
class WebSocketTransport:
    """The session's transport: what it writes is frames already (its
    renderings frame each line), and closing is the close handshake.

    Everything else is the socket's transport's own (``raw``): peer address
    (per-address limits), producers (the bounded output, input pausing), TCP
    options.
    """

    def __init__(self, ws):
        self._ws = ws
        self.raw = self._raw = ws.transport

    def write(self, data):
        if data:
            self._raw.write(data)

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
        chat.makeConnection(WebSocketTransport(self))

    def dataReceived(self, data):
        """Whole, unfragmented, masked text frames at the start of ``data``
        go straight to the session (:meth:`_text_frames`); everything else,
        and whatever follows the first frame that is not one, is Autobahn's."""
        if (self.state == self.STATE_OPEN and self.chat is not None and not self.data
                and self.current_frame is None and not self.inside_message
                and self._perMessageCompress is None and not self.logFrames
                and not self.logOctets):
            data = self._text_frames(data)
            if not data:
                return
        super().dataReceived(data)

    def _text_frames(self, data):
        """Hand the session each text message of ``data`` that is one whole
        frame: final, masked, no reserved bits, within the size bounds, valid
        UTF-8. Return the rest, from the first frame that is anything else
        (a control frame, a fragment, an incomplete or a faulty frame) for
        Autobahn to handle as it does every frame.

        Autobahn's frame parser costs about 15-25 us of Python a message
        (frame and message callbacks, per-frame masker objects, UTF-8
        validation, debug logging arguments), 2-3 times what the chat then
        does with it; a chat message is one small text frame."""
        limit = min([n for n in (self.maxFramePayloadSize, self.maxMessagePayloadSize) if n > 0],
                    default=1 << 20)
        i, end = 0, len(data)
        while end - i >= 6 and data[i] == 0x81 and data[i + 1] & 0x80:
            length = data[i + 1] & 0x7F
            at = i + 2
            if length == 126:
                if end - at < 2:
                    break
                length = int.from_bytes(data[at:at + 2], "big")
                at += 2
                if length < 126:
                    break  # not the minimal length encoding: Autobahn says so
            elif length == 127:
                break
            stop = at + 4 + length
            if length > limit or stop > end:
                break
            payload = data[at + 4:stop]
            if length:
                mask = data[at:at + 4] * ((length >> 2) + 1)
                payload = (int.from_bytes(payload, "little")
                           ^ int.from_bytes(mask[:length], "little")).to_bytes(length, "little")
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    break  # Autobahn fails the connection (1007)
            i = stop
            self.onMessage(payload, False)
            if self.state != self.STATE_OPEN or self.chat is None:
                break
        return data[i:] if i else data

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

    _direct = None  # straight to an idle plain-TCP socket (directwrite)

    def connectionMade(self):
        super().connectionMade()
        self._direct = directwrite.writer(self.transport)

    def sendData(self, data, sync=False, chopsize=None):
        """Autobahn's every write (handshake, pings, pongs, close), at once
        to an idle plain-TCP socket like the session's own (the direct
        writer: what the socket does not take, and everything while the
        transport holds bytes, goes to the transport). Otherwise the 101
        answer of the handshake waited in the transport for the next turn,
        and the session's first writes, and the room's first share to it,
        took the transport's way behind it instead of the express one.
        Bytes left in the transport are ones the room's next share must not
        pass: the express handle is checked again."""
        direct = self._direct
        if direct is None or sync or chopsize or self.send_queue or self.logOctets:
            super().sendData(data, sync, chopsize)
        else:
            direct(data)
        chat = self.chat
        if chat is not None and chat.outlet is not None:
            chat.outlet.transport_written()

    def sendCloseFrame(self, code=None, reasonUtf8=None, isReply=False):
        """No frame of the session's may follow the close frame: its output
        ends here (what it has queued goes first)."""
        chat = self.chat
        if chat is not None and self.state == self.STATE_OPEN and chat.output is not None:
            chat.output.close()
        super().sendCloseFrame(code, reasonUtf8, isReply)

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
