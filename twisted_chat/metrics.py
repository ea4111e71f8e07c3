"""What the server counts, exported as Prometheus metrics.

Counting is cheap and always on: the hot paths only add to plain integer
attributes of one :class:`Counts` per server (``Hub.counts``), room fan-out
once per flush by group sizes, never once per member. Everything else is
read when Prometheus asks (:class:`Metrics`' collector): gauges straight
from the hub, the delivery turn and the history store; counters from
:class:`Counts` and the store. Only two things are timed as they happen,
into :class:`Buckets` (a list of integers, not a locked
``prometheus_client.Histogram``): the history store's batches, and the
reactor's turns (:class:`TurnTimer`, which wraps the epoll reactor's
poller).

Each server has a registry of its own, not ``prometheus_client``'s global
default, so that several servers in one process (tests) do not mix.
``prometheus_client`` is imported only once metrics are asked for; serving
them over HTTP (``--metrics``) is :mod:`twisted_chat.monitor`.
"""

import bisect
import time

from twisted.logger import Logger

log = Logger()

# The faces a connection can come in through; a face that has no connections
# yet is still exported (as 0).
FACES = ("line",)
# Why a connection is refused at the door (twisted_chat.limits.ConnectionLimits).
REFUSALS = ("server-full", "too-many-connections")

TURN_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0, 2.5)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                  10.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class Counts:
    """One server's event counters: plain integers that hot paths add to."""

    __slots__ = ("deliveries", "bytes_out", "rate_limited", "slow_consumers", "login_failures",
                 "refused")

    def __init__(self):
        self.deliveries = 0  # events handed to connections
        self.bytes_out = 0  # bytes of those events
        self.rate_limited = 0  # lines dropped by --rate/--burst
        self.slow_consumers = 0  # connections cut for --max-backlog
        self.login_failures = 0
        self.refused = dict.fromkeys(REFUSALS, 0)  # reason -> connections refused


class Buckets:
    """A histogram's counts: ``observe`` is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self):
        """[(upper bound as Prometheus writes it, count), ...] ending with +Inf."""
        out, total = [], 0
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


class TurnTimer:
    """Times the reactor's turns: from the moment its poll returns (it has
    I/O to handle) to its next poll (all of that handled, and the timed
    calls due run). Works by wrapping the epoll reactor's poller; with
    another reactor, it does nothing and says so."""

    def __init__(self, reactor, buckets: Buckets):
        self.reactor = reactor
        self.buckets = buckets
        self._poller = None

    def start(self) -> bool:
        poller = getattr(self.reactor, "_poller", None)
        if poller is None or not hasattr(poller, "poll") or self._poller is not None:
            log.info("metrics: no reactor turn times with {reactor}",
                     reactor=type(self.reactor).__name__)
            return False
        self._poller = poller
        self.reactor._poller = _TimedPoller(poller, self.buckets)
        return True

    def stop(self) -> None:
        if self._poller is not None:
            self.reactor._poller = self._poller
            self._poller = None


class _TimedPoller:
    __slots__ = ("_poller", "_observe", "_woke")

    def __init__(self, poller, buckets):
        self._poller = poller
        self._observe = buckets.observe
        self._woke = None

    def poll(self, *args):
        if self._woke is not None:
            self._observe(time.perf_counter() - self._woke)
        try:
            return self._poller.poll(*args)
        finally:
            self._woke = time.perf_counter()

    def __getattr__(self, name):  # register, modify, unregister, fileno, close
        return getattr(self._poller, name)


class Metrics:
    """One server's metrics: the registry ``/metrics`` shows and the
    accumulators fed while it runs."""

    def __init__(self, hub, turn, store, reactor=None):
        from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

        if reactor is None:
            from twisted.internet import reactor
        self.hub = hub
        self.turn = turn  # twisted_chat.delivery.turn.Turn
        self.store = store
        self.faces = {}  # face name -> callable returning its open connections
        for face in FACES:
            self.faces[face] = lambda: 0
        self.turns = Buckets(TURN_BUCKETS)
        self.commits = Buckets(COMMIT_BUCKETS)
        self.batches = Buckets(BATCH_BUCKETS)
        self.turn_timer = TurnTimer(reactor, self.turns)
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(_Collector(self))
        store.observe_batch = self.observe_batch

    def add_face(self, name: str, connections) -> None:
        """Export ``connections()`` as ``chat_connections{face=name}``."""
        self.faces[name] = connections

    def observe_batch(self, seconds: float, size: int) -> None:
        self.commits.observe(seconds)
        self.batches.observe(size)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _Collector:
    """Reads the server's state when Prometheus asks."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)

        m = self.metrics
        hub, turn, store, counts = m.hub, m.turn, m.store, m.hub.counts

        faces = GaugeMetricFamily("chat_connections", "Open client connections, by face.",
                                  labels=["face"])
        for face, connections in m.faces.items():
            faces.add_metric([face], connections())
        yield faces
        members = list(hub.members.values())
        yield GaugeMetricFamily("chat_members", "Connected members (registered or not).",
                                value=len(members))
        yield GaugeMetricFamily("chat_members_registered",
                                "Members registered (named, or past the grace, and seen "
                                "by others).",
                                value=sum(1 for member in members if member.registered))
        yield GaugeMetricFamily("chat_rooms", "Rooms that exist.", value=len(hub.rooms))
        yield GaugeMetricFamily("chat_input_paused",
                                "1 while input is paused for a history store that is behind.",
                                value=1 if turn.input_paused else 0)

        # A store without these (another IHistoryStore) shows zeros.
        stored, not_stored, waiting, reads = (getattr(store, name, 0) for name in (
            "stored", "not_stored", "waiting", "reads"))
        yield CounterMetricFamily(
            "chat_messages_accepted", "Messages (room and private) accepted for storage.",
            value=stored + not_stored + waiting)
        yield CounterMetricFamily("chat_history_stored_messages",
                                  "Messages committed to the history store.", value=stored)
        yield CounterMetricFamily("chat_history_not_stored_messages",
                                  "Messages the history store failed to store (not delivered).",
                                  value=not_stored)
        yield GaugeMetricFamily("chat_history_waiting_messages",
                                "Messages accepted and waiting for their commit.", value=waiting)
        yield CounterMetricFamily("chat_history_reads", "Reads of the history (replays, "
                                  "/history pages).", value=reads)
        yield _histogram(HistogramMetricFamily, "chat_history_commit_seconds",
                         "Time from handing a batch to the writer to its answer.", m.commits)
        yield _histogram(HistogramMetricFamily, "chat_history_batch_messages",
                         "Messages per committed batch.", m.batches)

        yield CounterMetricFamily("chat_deliveries", "Events handed to client connections.",
                                  value=counts.deliveries)
        yield CounterMetricFamily("chat_out_bytes", "Bytes of the events handed to client "
                                  "connections.", value=counts.bytes_out)
        yield CounterMetricFamily("chat_rate_limited_lines",
                                  "Client lines dropped by the rate limit.",
                                  value=counts.rate_limited)
        yield CounterMetricFamily("chat_slow_consumers_disconnected",
                                  "Connections cut because their output backlog was full.",
                                  value=counts.slow_consumers)
        refused = CounterMetricFamily("chat_connections_refused",
                                      "Connections refused at the door, by reason.",
                                      labels=["reason"])
        for reason, count in counts.refused.items():
            refused.add_metric([reason], count)
        yield refused
        yield CounterMetricFamily("chat_login_failures", "Failed /login attempts.",
                                  value=counts.login_failures)
        yield _histogram(HistogramMetricFamily, "chat_reactor_turn_seconds",
                         "Reactor turns: time from a poll's return to the next poll.", m.turns)


def _histogram(family, name, documentation, buckets: Buckets):
    return family(name, documentation, buckets=buckets.cumulative(), sum_value=buckets.sum)
