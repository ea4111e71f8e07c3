"""``--metrics ENDPOINT``: Prometheus metrics and a health check over HTTP.

A twisted.web site on its own listener, beside the chat's:

- ``/metrics``: the Prometheus text format of the server's registry
  (:class:`twisted_chat.metrics.Metrics`);
- ``/healthz``: ``200`` and ``ok`` while the server accepts connections and
  its history store answers, else ``503`` and the reasons, one a line
  (:class:`Health`).

Both are rendered on the reactor thread: ``prometheus_client``'s own Twisted
resource renders in a thread pool, where reading the hub's rooms and members
would race with the reactor changing them. Requests are not logged (a
scrape every few seconds would drown the chat's log).
"""

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from .metrics import Metrics

# How long the history store gets to answer its probe (an empty write
# transaction), and how long a batch of messages that failed to be stored
# counts against it when no batch has been stored since.
PROBE_TIMEOUT = 2.0
FAILURE_WINDOW = 60.0


class Health:
    """What ``/healthz`` checks: the server runs and its listeners listen,
    input is not paused for a store that is behind, no batch of messages
    failed to be stored in the last ``failure_window`` seconds without one
    stored since, and the store answers a probe (an empty write
    transaction, which takes the database's write lock) within
    ``probe_timeout`` seconds."""

    def __init__(self, service, turn, store, listeners, clock,
                 probe_timeout=PROBE_TIMEOUT, failure_window=FAILURE_WINDOW):
        self.service = service  # the chat service: running until it stops
        self.turn = turn  # the server's Turn (twisted_chat.delivery.turn)
        self.store = store
        self.listeners = listeners  # each has .description, and .port once listening
        self.clock = clock
        self.probe_timeout = probe_timeout
        self.failure_window = failure_window
        self._waiters = []  # while a probe is in progress: who waits for it

    def problems(self):
        """The reasons to be unhealthy that need no waiting (a list)."""
        found = []
        if not self.service.running:
            found.append("the server is not running (starting or stopping)")
        for listener in self.listeners:
            port = listener.port
            if port is None or not getattr(port, "connected", True):
                found.append(f"not listening on {listener.description}")
        if self.turn.input_paused:
            found.append("input paused: the history store is behind")
        failure = getattr(self.store, "write_failure", None)
        if failure is not None and self.clock.seconds() - failure[0] < self.failure_window:
            found.append(f"the history store failed to store messages: {failure[1]}")
        return found

    def check(self) -> defer.Deferred:
        """A Deferred firing with the list of problems (empty: healthy)."""
        found = self.problems()
        if getattr(self.store, "probe", None) is None:
            return defer.succeed(found)  # a store that cannot be probed
        answer = defer.Deferred()
        late = self.clock.callLater(
            self.probe_timeout, answer.callback,
            f"the history store did not answer within {self.probe_timeout:g} s")

        def answered(reason):
            if late.active():
                late.cancel()
                answer.callback(reason)

        self._waiters.append(answered)
        if len(self._waiters) == 1:
            # One probe at a time: a store that does not answer is not sent
            # more; whoever asks meanwhile waits for the same answer.
            defer.maybeDeferred(self.store.probe).addBoth(self._probed)
        return answer.addCallback(lambda reason: found + ([reason] if reason else []))

    def _probed(self, result):
        reason = None
        if isinstance(result, Failure):
            reason = f"the history store failed: {result.getErrorMessage()}"
        waiters, self._waiters = self._waiters, []
        for answered in waiters:
            answered(reason)


class _MetricsPage(Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics):
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request):
        from prometheus_client import CONTENT_TYPE_LATEST

        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return self.metrics.exposition()


class _HealthPage(Resource):
    isLeaf = True

    def __init__(self, health: Health):
        super().__init__()
        self.health = health

    def render_GET(self, request):
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(problems):
            if gone:
                return
            request.setResponseCode(503 if problems else 200)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            request.write(("\n".join(problems) if problems else "ok").encode("utf-8") + b"\n")
            request.finish()

        self.health.check().addCallback(answer)
        return NOT_DONE_YET


class _Index(Resource):
    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"twisted-chat: /metrics (Prometheus), /healthz\n"

    def getChild(self, path, request):
        if path == b"":
            return self
        return super().getChild(path, request)


class _QuietSite(Site):
    noisy = False

    def log(self, request):
        pass


class MonitorService(MultiService):
    """The ``--metrics`` listener, and the reactor turn timer while it runs."""

    def __init__(self, listener, metrics: Metrics, health: Health):
        super().__init__()
        self.metrics = metrics
        self.health = health
        root = _Index()
        root.putChild(b"metrics", _MetricsPage(metrics))
        root.putChild(b"healthz", _HealthPage(health))
        self.site = _QuietSite(root)
        StreamServerEndpointService(listener, self.site).setServiceParent(self)

    def startService(self):
        self.metrics.turn_timer.start()
        super().startService()

    def stopService(self):
        self.metrics.turn_timer.stop()
        return super().stopService()


def monitor(listener, chat_service, turn, store, chat_listeners, reactor=None):
    """The ``--metrics`` service of a server, on ``listener`` (a server
    endpoint): the metrics of ``turn``'s hub, and a health check of
    ``chat_service`` whose ``chat_listeners`` (with ``description`` and
    ``port``) are checked."""
    from .protocol import ChatProtocol

    if reactor is None:
        from twisted.internet import reactor
    metrics = Metrics(turn.hub, turn, store, reactor)
    metrics.add_face("line", lambda: sum(1 for outlet in turn.connections
                                         if isinstance(outlet.face, ChatProtocol)))
    health = Health(chat_service, turn, store, chat_listeners, reactor)
    return MonitorService(listener, metrics, health)
