"""``twistd chat``: its command-line options and the service tree they build."""

import gc
import resource

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.strcred import AuthOptionMixin
from twisted.internet.defer import succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from . import limits, presence
from .auth import Accounts
from .commands import valid_nick, valid_room
from .delivery.turn import Turn, TurnService
from .errors import ChatError
from .history import HISTORY_CAP, HistoryError
from .history import lock as history_lock
from .history import pg as history_pg
from .history import schema as history_schema
from .history.sqlite import SQLiteHistory
from .hub import DEFAULT_MAX_ROOMS, DEFAULT_REPLAY, Hub
from .protocol import DEFAULT_MAX_LINE, ChatFactory

DEFAULT_PORT = "tcp:5000"
log = Logger()


def endpoint_description(value: str) -> str:
    """A bare port number means tcp:NUMBER; anything else is an endpoint string."""
    value = value.strip()
    return f"tcp:{value}" if value.isdigit() else value


# Endpoint types whose parsers take a backlog= argument.
_BACKLOG_TYPES = ("tcp", "tcp6", "ssl", "unix")


def with_backlog(description: str, backlog: int) -> str:
    """Add ``backlog=`` to a listening endpoint that does not name its own
    (Twisted's default of 50 drops most of a reconnect storm)."""
    kind = description.split(":", 1)[0].lower()
    if kind in _BACKLOG_TYPES and "backlog=" not in description:
        return f"{description}:backlog={backlog}"
    return description


# A listener behind a load balancer that sends the PROXY header.
PROXIED = "haproxy:"


def listener(reactor, description: str, backlog: int):
    """The server endpoint of a --port, --irc or --web description;
    ``haproxy:...`` reads each connection's PROXY header before the chat
    sees it (:mod:`.proxyheader`)."""
    if description[:len(PROXIED)].lower() != PROXIED:
        return serverFromString(reactor, with_backlog(description, backlog))
    from .proxyheader import ProxyHeaderEndpoint

    inner = description[len(PROXIED):]
    if inner.split(":", 1)[0].lower() == "ssl":
        # The balancer's header comes before the TLS handshake, which the
        # ssl: endpoint would take it for.
        raise ValueError("the PROXY header comes before TLS: give haproxy:tcp:... and let "
                         "the balancer end TLS")
    return ProxyHeaderEndpoint(serverFromString(reactor, with_backlog(inner, backlog)))


class Options(AuthOptionMixin, usage.Options):
    synopsis = "[options]"
    supportedInterfaces = (IUsernamePassword,)  # --auth checkers of names and passwords
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
        # Limits (docs/operations.rst, "Limits and hostile clients").
        ["max-backlog", None, limits.DEFAULT_MAX_BACKLOG,
         "Bytes of output queued for a client that does not keep up (beyond the 64 KiB "
         "transport buffer); over this the client is disconnected.", int],
        ["rate", None, limits.DEFAULT_RATE,
         "Lines per second a connection may send, sustained (0: no limit).", float],
        ["burst", None, limits.DEFAULT_BURST,
         "Lines a connection may send at once before --rate applies.", int],
        ["max-clients", None, limits.DEFAULT_MAX_CLIENTS,
         "Connections served at once (0: no limit); more get server-full.", int],
        ["max-per-ip", None, limits.DEFAULT_MAX_PER_IP,
         "Connections from one address (0: no limit); more get too-many-connections.", int],
        ["idle-timeout", None, 0.0,
         "Disconnect a client that sends nothing for this many seconds (0: never).", float],
        ["listen-backlog", None, limits.DEFAULT_LISTEN_BACKLOG,
         "Listen queue length for endpoints that do not set backlog= (the kernel may cap "
         "it at net.core.somaxconn).", int],
        ["shutdown-timeout", None, limits.DEFAULT_SHUTDOWN_TIMEOUT,
         "Seconds clients get to read their bye at shutdown before connections are cut.",
         float],
        # History (docs/operations.rst, "Message history").
        ["db", None, "chat.sqlite",
         "SQLite file keeping the message history (created if missing); "
         "':memory:' keeps history in memory only, lost at exit; "
         "postgresql://USER@HOST/DBNAME keeps it in PostgreSQL (needs the [cluster] extra)."],
        ["history", None, DEFAULT_REPLAY,
         f"Messages of a room replayed to a joiner (0 to {HISTORY_CAP}; 0: none).", int],
        ["history-days", None, None,
         "Delete messages older than this many days (checked hourly). "
         "Default: keep everything.", float],
        ["guests", None, None,
         "yes|no: may connections that have not logged in chat? "
         "Default: yes without --auth, no with it."],
        # Big rooms (docs/protocol.rst, "presence"; docs/performance.rst).
        ["presence-threshold", None, presence.DEFAULT_THRESHOLD,
         "Rooms of at least this many members announce joins and parts in one "
         "presence event per --presence-interval (0: never batch).", int],
        ["presence-interval", None, presence.DEFAULT_INTERVAL,
         "Seconds between presence events of a big room.", float],
        # Operations (docs/operations.rst, "Metrics and health check").
        ["metrics", None, None,
         "Serve Prometheus metrics at /metrics and a health check at /healthz on this "
         "endpoint (e.g. tcp:9100:interface=127.0.0.1; a bare number means tcp:NUMBER, "
         "all interfaces). Default: none."],
        # Several servers as one chat (docs/operations.rst, "Running several servers").
        ["redis", None, None,
         "Be one of a cluster of servers sharing --db postgresql://...: the Redis server "
         "that carries their notifications, as a client endpoint (tcp:HOST:PORT, "
         "unix:PATH; HOST:PORT means tcp). Needs the [cluster] extra. Default: none "
         "(a server alone)."],
        # Rooms (docs/protocol.rst, "Several rooms", "Operators").
        ["max-rooms", None, DEFAULT_MAX_ROOMS, "Rooms one connection may be in at once.", int],
    ]

    def __init__(self):
        super().__init__()
        self["ports"] = []
        self["web"] = []
        self["web-origins"] = []
        self["irc"] = []
        self["admins"] = []

    def opt_admin(self, value):
        """An account that operates every room (repeatable; needs --auth)."""
        try:
            self["admins"].append(valid_nick(value))
        except ChatError as e:
            raise usage.UsageError(f"bad --admin {value!r}: {e.message}")

    def opt_port(self, value):
        """Listen on this endpoint (repeatable): tcp:5000, tcp:5000:interface=127.0.0.1, unix:/tmp/chat.sock, or a bare port number; haproxy:tcp:5000 behind a load balancer that sends the PROXY header (docs/operations.rst). Default: tcp:5000 (all interfaces)."""  # noqa: E501
        self["ports"].append(endpoint_description(value))

    opt_p = opt_port

    def opt_web(self, value):
        """Serve the browser client (a page at /, its WebSocket at /ws) on this endpoint (repeatable): tcp:8080, ssl:8443:privateKey=key.pem:certKey=cert.pem, or a bare port number; haproxy:tcp:8080 behind a PROXY-header balancer. Default: none."""  # noqa: E501
        self["web"].append(endpoint_description(value))

    def opt_web_origin(self, value):
        """Also accept WebSockets from pages of this origin (repeatable): https://chat.example.org, or * for any. Default: only the page's own."""  # noqa: E501
        value = value.strip()
        if value != "*":
            from .web.session import _origin
            try:
                _origin(value)
            except ValueError:
                raise usage.UsageError(f"bad --web-origin {value!r}: give scheme://host[:port]")
        self["web-origins"].append(value)

    def opt_irc(self, value):
        """Also serve IRC clients on this endpoint (repeatable): tcp:6667, ssl:6697:privateKey=KEY:certKey=CERT, or a bare port number; haproxy:tcp:6667 behind a PROXY-header balancer (docs/irc.rst)."""  # noqa: E501
        self["irc"].append(endpoint_description(value))

    def postOptions(self):
        from twisted.internet import reactor

        if not self["ports"]:
            self["ports"] = [DEFAULT_PORT]
        endpoints = []
        for name in ("max-backlog", "max-clients", "max-per-ip", "idle-timeout",
                     "shutdown-timeout", "rate"):
            if self[name] < 0:
                raise usage.UsageError(f"--{name} must not be negative")
        if self["burst"] < 1:
            raise usage.UsageError("--burst must be at least 1")
        if self["presence-threshold"] < 0:
            raise usage.UsageError("--presence-threshold must not be negative")
        if not 0 < self["presence-interval"] <= 60:
            raise usage.UsageError("--presence-interval must be in (0, 60] seconds")
        if self["listen-backlog"] < 1:
            raise usage.UsageError("--listen-backlog must be at least 1")
        if self["max-rooms"] < 1:
            raise usage.UsageError("--max-rooms must be at least 1")
        if self["admins"] and not self.get("credCheckers"):
            raise usage.UsageError("--admin names accounts: give --auth too")
        for description in self["ports"]:
            try:
                endpoints.append(listener(reactor, description, self["listen-backlog"]))
            except Exception as e:  # the parser raises many types; all mean "bad"
                raise usage.UsageError(f"bad --port {description!r}: {e}")
        self["endpoints"] = endpoints
        if self["metrics"] is not None:
            self["metrics"] = endpoint_description(self["metrics"])
            try:
                self["metrics-endpoint"] = serverFromString(reactor, self["metrics"])
            except Exception as e:
                raise usage.UsageError(f"bad --metrics {self['metrics']!r}: {e}")
        self["web-endpoints"] = []
        for description in self["web"]:
            try:
                self["web-endpoints"].append(
                    listener(reactor, description, self["listen-backlog"]))
            except Exception as e:
                raise usage.UsageError(f"bad --web {description!r}: {e}")
        self["irc-endpoints"] = []
        for description in self["irc"]:
            try:
                self["irc-endpoints"].append(
                    listener(reactor, description, self["listen-backlog"]))
            except Exception as e:  # the parser raises many types; all mean "bad"
                raise usage.UsageError(f"bad --irc {description!r}: {e}")
        try:
            self["default-room"] = valid_room(self["default-room"])
        except ChatError as e:
            raise usage.UsageError(f"bad --default-room: {e.message}")
        self["guests"] = _guests(self["guests"], bool(self.get("credCheckers")))
        if self["max-line"] < 64:
            raise usage.UsageError("--max-line must be at least 64 bytes")
        if not 0 <= self["history"] <= HISTORY_CAP:
            raise usage.UsageError(f"--history must be between 0 and {HISTORY_CAP}")
        days = self["history-days"]
        if days is not None and not days > 0:  # also refuses NaN
            raise usage.UsageError("--history-days must be a positive number of days")
        try:
            if history_pg.is_url(self["db"]):
                history_pg.check(self["db"])
            else:
                history_schema.check(self["db"])
        except HistoryError as e:
            raise usage.UsageError(f"cannot use --db {history_pg.describe(self['db'])}: {e}")
        if self["redis"] is not None:
            self._check_redis(reactor)

    def _check_redis(self, reactor):
        from twisted.internet.endpoints import clientFromString

        from . import cluster

        if not history_pg.is_postgres(self["db"]):
            raise usage.UsageError(
                f"--redis makes this server one of a cluster, whose servers share their "
                f"history and rooms in one PostgreSQL database; --db {self['db']} is an "
                f"SQLite file only this process can use: give --db postgresql://USER@HOST/DBNAME")
        why = cluster.check()
        if why:
            raise usage.UsageError(why)
        self["redis"] = cluster.endpoint_description(self["redis"])
        try:
            self["redis-endpoint"] = clientFromString(reactor, self["redis"])
        except Exception as e:  # the parser raises many types; all mean "bad"
            raise usage.UsageError(f"bad --redis {self['redis']!r}: {e}")


def _guests(value, have_accounts: bool) -> bool:
    if value is None:
        return not have_accounts
    if value.lower() not in ("yes", "no"):
        raise usage.UsageError(f"--guests takes yes or no, not {value!r}")
    if value.lower() == "no" and not have_accounts:
        raise usage.UsageError("--guests no needs accounts: give --auth too")
    return value.lower() == "yes"


class _Announced:
    """Wraps a server endpoint to log the address it really listens on
    (so ``tcp:0`` is usable: the log names the port the kernel chose);
    ``port`` is the listening port once it listens."""

    def __init__(self, endpoint, description, what="chat"):
        self._endpoint = endpoint
        self.description = description
        self._what = what
        self.port = None

    def listen(self, factory):
        def announce(port):
            self.port = port
            address = port.getHost()
            log.info("{what} listening on {where} ({description})", what=self._what,
                     where=_where(address), description=self.description)
            return port

        return self._endpoint.listen(factory).addCallback(announce)


def _where(address):
    kind = getattr(address, "type", None)
    if kind in ("TCP", "UDP"):
        return f"{kind.lower()}:{address.port}:interface={address.host}"
    return f"unix:{getattr(address, 'name', address)}"


def makeService(options) -> service.IService:
    from twisted.internet import reactor

    checkers = options.get("credCheckers")
    accounts = Accounts(checkers, reactor) if checkers else None
    store_class = _PostgresStore if history_pg.is_postgres(options["db"]) else _HistoryStore
    store = store_class(options["db"], clock=reactor, retention_days=options["history-days"])
    if options.get("redis"):
        from .cluster.store import ClusterStore

        store = ClusterStore(store, options["redis-endpoint"], options["redis"], reactor)
    hub = Hub(
        server_name=options["server-name"],
        motd=options["motd"],
        default_room=options["default-room"],
        reserved=accounts.reserved if accounts else None,
        guests=options["guests"],
        history=store,
        replay=options["history"],
        admins=options["admins"],
        max_rooms=options["max-rooms"],
    )
    if options.get("redis"):
        store.attach(hub)
    hub.presence_threshold = options["presence-threshold"]
    hub.presence_interval = options["presence-interval"]
    if options["history-days"]:
        hub.recent.max_age = options["history-days"] * 86400.0  # as the store prunes
    # The one delivery service: every face's factory registers its
    # connections with it, and --max-clients counts them all.
    turn = Turn(hub, clock=reactor,
                max_clients=_check_descriptors(options["max-clients"],
                                               options["listen-backlog"]),
                max_per_ip=options["max-per-ip"])
    store.on_pressure(turn.pause_input, turn.resume_input)
    factory = ChatFactory(
        hub, turn=turn, max_line=options["max-line"],
        max_backlog=options["max-backlog"], rate=options["rate"], burst=options["burst"],
        idle_timeout=options["idle-timeout"], accounts=accounts,
    )
    top = _HistoryChatService(turn, options["shutdown-timeout"], store)
    top.factory = factory  # the line face's
    listeners = []
    for description, endpoint in zip(options["ports"], options["endpoints"]):
        listeners.append(_Announced(endpoint, description))
        StreamServerEndpointService(listeners[-1], factory).setServiceParent(top)
    if options["irc"]:
        from .faces.irc.protocol import IRCFactory

        irc = IRCFactory(hub, turn=turn, accounts=accounts, max_backlog=options["max-backlog"],
                         rate=options["rate"], burst=options["burst"])
        for description, endpoint in zip(options["irc"], options["irc-endpoints"]):
            StreamServerEndpointService(_Announced(endpoint, description, what="irc"),
                                        irc).setServiceParent(top)
    if options.get("metrics"):
        from .monitor import monitor

        listener = _Announced(options["metrics-endpoint"], options["metrics"], what="metrics")
        monitor(listener, top, turn, store, listeners, reactor).setServiceParent(top)
    if options["web"]:
        from .web.site import make_site  # Autobahn only for --web

        site = make_site(factory, options["web-origins"])
        for description, endpoint in zip(options["web"], options["web-endpoints"]):
            StreamServerEndpointService(_Announced(endpoint, description, "web"),
                                        site).setServiceParent(top)
    return top


# Young-generation collections every this many allocations (Python's default
# is 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_gc():
    """Garbage-collector settings for a busy chat server, once it runs.

    What exists by then (modules, classes, the service tree) lives as long
    as the process: ``gc.freeze()`` takes it out of every later collection.
    And a message allocates a few objects that reference counting frees at
    once, except those waiting for their group commit: at the default
    threshold, collections came every few dozen messages and walked the
    thousands waiting each time (docs/performance.rst, "Message history").
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def _check_descriptors(max_clients, listen_backlog):
    """Raise the open-file soft limit so --max-clients connections fit;
    return the client limit that really fits (0: unlimited).

    Past the descriptor limit accept() fails and the client sees nothing;
    below it, the client over the limit gets a clean server-full.
    """
    wanted = max_clients + limits.FD_HEADROOM if max_clients else 1 << 20
    soft = limits.raise_fd_limit(wanted)
    if soft is not None and soft != resource.RLIM_INFINITY:
        log.info("open-file limit {soft}", soft=soft)
        if soft < wanted:
            fits = max(soft - limits.FD_HEADROOM, soft // 2)
            log.warn("open-file limit {soft} is too low for --max-clients {n}: serving at most "
                     "{fits} clients; raise the hard limit (ulimit -Hn) to serve more",
                     soft=soft, n=max_clients or "unlimited", fits=fits)
            max_clients = fits
    _check_somaxconn(listen_backlog)
    return max_clients


def _check_somaxconn(listen_backlog):
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            cap = int(f.read())
    except (OSError, ValueError):
        return
    if cap < listen_backlog:
        log.info("listen backlog {n} is capped by the kernel at {cap} "
                 "(net.core.somaxconn); clients beyond it retry their SYN",
                 n=listen_backlog, cap=cap)


class _HistoryStore(SQLiteHistory):
    """The store as twistd runs it: an unusable database ends the process
    with one clear log line and exit status 1, not a traceback. A database
    file is locked while it is open (twisted_chat.history.lock): a second
    server on it is refused, and so are twisted-chat-admin's changes."""

    _lock = None

    def startService(self):
        try:
            if self.path != history_schema.MEMORY:
                self._lock = history_lock.acquire(self.path)
            super().startService()
        except HistoryError as e:
            log.critical("cannot use --db {path}: {reason}", path=self.path, reason=e)
            raise SystemExit(1)
        where = "in memory only" if self.path == history_schema.MEMORY else self.path
        log.info("history: {where}", where=where)

    def stopService(self):
        def unlock(result):
            if self._lock is not None:  # the store's connections are closed now
                history_lock.release(self._lock)
                self._lock = None
            return result

        return super().stopService().addBoth(unlock)


class _PostgresStore(history_pg.PostgresHistory):
    """The PostgreSQL store as twistd runs it: a database that cannot be
    reached or used at start ends the process with one clear log line and
    exit status 1. Later outages fail the messages of the moment (not-stored)
    and the store reconnects by itself."""

    def startService(self):
        where = history_pg.describe(self.path)
        try:
            super().startService()
        except HistoryError as e:
            log.critical("cannot use --db {path}: {reason}", path=where, reason=e)
            raise SystemExit(1)
        log.info("history: {where} (PostgreSQL, last id {last})", where=where,
                 last=self.last_id_at_start)


class _HistoryChatService(TurnService):
    """The chat service around its history store: the store opens, then the
    rooms' lasting state (topics, flags, operators, bans) is read from it,
    and only then do the listeners start; they stop, the clients are gone,
    and then the store closes (having written what is pending).

    The rooms are read in the store's thread, so the first connections could
    otherwise be served before they arrive: right after a restart a joiner
    missed its room's topic, and could be made operator of a room whose
    bans and flags were not there yet.
    """

    def __init__(self, turn, shutdown_timeout, store):
        super().__init__(turn, shutdown_timeout)
        self.store = store
        self._loading = None  # the rooms' read, until the listeners start

    def privilegedStartService(self):
        # The listeners listen in startService, once the rooms are loaded,
        # not here (before the reactor runs and the rooms can arrive):
        # nothing here needs privileges (docs/operations.rst: never as root).
        service.Service.privilegedStartService(self)

    def startService(self):
        from twisted.internet import reactor

        self.store.startService()
        service.Service.startService(self)
        self._loading = self.turn.hub.load_rooms()  # a failure is logged there
        self._loading.addBoth(self._listen)
        reactor.callWhenRunning(tune_gc)

    def _listen(self, _):
        self._loading = None
        if self.running:  # not stopped meanwhile
            for child in self:
                child.startService()

    def stopService(self):
        if self._loading is not None:
            # Stopped before the rooms arrived: nothing listens, nobody is
            # connected; the store finishes the read, then closes.
            service.Service.stopService(self)
            d = succeed(None)
        else:
            d = super().stopService()
        d.addBoth(lambda _: self.store.stopService())
        return d
