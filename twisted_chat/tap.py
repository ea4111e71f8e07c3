"""``twistd chat``: its command-line options and the service tree they build."""

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from .commands import valid_room
from .errors import ChatError
from .hub import Hub
from .protocol import DEFAULT_MAX_LINE, ChatFactory

DEFAULT_PORT = "tcp:5000"
log = Logger()


def endpoint_description(value: str) -> str:
    """A bare port number means tcp:NUMBER; anything else is an endpoint string."""
    value = value.strip()
    return f"tcp:{value}" if value.isdigit() else value


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a twisted-chat server. Clients speak a line protocol (see "
        "docs/protocol.rst): netcat works, and so does twisted-chat-client."
    )
    optParameters = [
        ["motd", None, None, "Message of the day, sent in every welcome."],
        ["default-room", None, "lobby", "Room that new connections join."],
        ["max-line", None, DEFAULT_MAX_LINE,
         "Longest accepted line in bytes, terminator not counted.", int],
        ["server-name", None, "twisted-chat", "Server name sent in the welcome."],
    ]

    def __init__(self):
        super().__init__()
        self["ports"] = []

    def opt_port(self, value):
        """Listen on this endpoint (repeatable): tcp:5000, tcp:5000:interface=127.0.0.1, unix:/tmp/chat.sock, or a bare port number. Default: tcp:5000 (all interfaces)."""  # noqa: E501
        self["ports"].append(endpoint_description(value))

    opt_p = opt_port

    def postOptions(self):
        from twisted.internet import reactor

        if not self["ports"]:
            self["ports"] = [DEFAULT_PORT]
        endpoints = []
        for description in self["ports"]:
            try:
                endpoints.append(serverFromString(reactor, description))
            except Exception as e:  # the parser raises many types; all mean "bad"
                raise usage.UsageError(f"bad --port {description!r}: {e}")
        self["endpoints"] = endpoints
        try:
            self["default-room"] = valid_room(self["default-room"])
        except ChatError as e:
            raise usage.UsageError(f"bad --default-room: {e.message}")
        if self["max-line"] < 64:
            raise usage.UsageError("--max-line must be at least 64 bytes")


class _Announced:
    """Wraps a server endpoint to log the address it really listens on
    (so ``tcp:0`` is usable: the log names the port the kernel chose)."""

    def __init__(self, endpoint, description):
        self._endpoint = endpoint
        self._description = description

    def listen(self, factory):
        def announce(port):
            address = port.getHost()
            log.info("chat listening on {where} ({description})",
                     where=_where(address), description=self._description)
            return port

        return self._endpoint.listen(factory).addCallback(announce)


def _where(address):
    kind = getattr(address, "type", None)
    if kind in ("TCP", "UDP"):
        return f"{kind.lower()}:{address.port}:interface={address.host}"
    return f"unix:{getattr(address, 'name', address)}"


def makeService(options) -> service.IService:
    from twisted.internet import reactor

    hub = Hub(
        server_name=options["server-name"],
        motd=options["motd"],
        default_room=options["default-room"],
    )
    factory = ChatFactory(hub, clock=reactor, max_line=options["max-line"])
    top = service.MultiService()
    for description, endpoint in zip(options["ports"], options["endpoints"]):
        StreamServerEndpointService(_Announced(endpoint, description), factory).setServiceParent(top)
    return top
