"""ChatClientProtocol: the client's end of the wire, JSON lines in, command lines out.

It knows nothing about windows or conversation state: every JSON event goes to
the session (:class:`~twisted_chat.client.session.ChatSession`), which owns
the model. The text-mode welcome that precedes the switch to JSON mode is
skipped; a non-JSON line after that is handed over as ``raw_line``.
"""

import json

from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver


class ChatClientProtocol(LineReceiver):
    delimiter = b"\n"
    # Server lines can be long (a names event of a big room); the server
    # bounds what it accepts, not what it sends.
    MAX_LENGTH = 4 * 1024 * 1024
    log = Logger()

    def __init__(self, session):
        self.session = session
        self._json_seen = False

    def connectionMade(self):
        self.session.connected(self)

    def connectionLost(self, reason):
        self.session.disconnected(self, reason)

    def lineReceived(self, line):
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        try:
            event = json.loads(text)
        except ValueError:
            event = None
        if isinstance(event, dict) and isinstance(event.get("type"), str):
            self._json_seen = True
            self.session.event_received(self, event)
        elif self._json_seen:
            self.session.raw_line(self, text)
        else:
            self.log.debug("before JSON mode: {line}", line=text)

    def lineLengthExceeded(self, line):
        self.log.warn("dropping a server line over {n} bytes", n=self.MAX_LENGTH)
        self.transport.loseConnection()

    def send(self, text: str) -> None:
        """Send one line (a message or a /command) to the server."""
        self.sendLine(text.encode("utf-8"))


class ChatClientFactory(Factory):
    """Builds a ChatClientProtocol wired to one session, for every (re)connection."""

    def __init__(self, session):
        self.session = session

    def buildProtocol(self, addr):
        proto = ChatClientProtocol(self.session)
        proto.factory = self
        return proto
