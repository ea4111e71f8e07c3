"""Metrics and the health check: the counting (units over StringTransport),
the health rules (a fake store and clock), and ``twistd chat --metrics``
scraped over HTTP while clients chat, including /healthz turning 503 when
the history writer cannot write."""

import os
import re
import socket
import sqlite3
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat import metrics, monitor
from twisted_chat.history import HistoryError
from twisted_chat.tap import Options

from .support import ChatServer
from .test_limits import Harness


def output_events(transports):
    """Events in the transports' output: lines, but a text welcome has two."""
    return sum(t.value().count(b"\r\n") - t.value().count(b"\r\n-- type /help")
               for t in transports)


class CountingTests(SynchronousTestCase):
    """Counts.deliveries and bytes_out say exactly what reached the connections,
    whichever path an event took (a room's common share, a sender's slice,
    a mid-turn joiner's catch-up, a direct event)."""

    def test_counts_match_what_the_transports_got(self):
        h = Harness(rate=0)
        conns = [h.connect(nick="alice", json=False), h.connect(nick="bob"),
                 h.connect(nick="carol")]
        transports = [t for _, t in conns]
        (alice, _), (bob, _), (carol, _) = conns

        def check():
            self.assertEqual(h.hub.counts.deliveries, output_events(transports))
            self.assertEqual(h.hub.counts.bytes_out, sum(len(t.value()) for t in transports))

        check()
        before = h.hub.counts.deliveries
        alice.dataReceived(b"hello\r\n")  # text mode: no echo, two deliveries
        h.turn()
        self.assertEqual(h.hub.counts.deliveries - before, 2)
        check()
        bob.dataReceived(b"hi\r\n/who\r\n/msg carol psst\r\n")  # echo, names, private
        carol.dataReceived(b"/join dev\r\nthere\r\n/join lobby\r\n")
        h.turn()
        check()
        # A joiner in the middle of a turn of room events, and one who leaves.
        alice.dataReceived(b"one\r\n")
        dave, dave_t = h.connect(nick="dave")
        transports.append(dave_t)
        bob.dataReceived(b"two\r\n")
        carol.dataReceived(b"/quit\r\n")
        h.turn()
        check()
        self.assertEqual(h.hub.counts.rate_limited, 0)

    def test_rate_limited_lines_and_refusals_are_counted(self):
        h = Harness(rate=1, burst=2, max_per_ip=1)
        alice, _ = h.connect(json=False)
        alice.dataReceived(b"/ping 1\r\n/ping 2\r\n/ping 3\r\n/ping 4\r\n/quit\r\n")
        self.assertEqual(h.hub.counts.rate_limited, 2)
        h.connect()  # alice is still open: same address, refused
        self.assertEqual(h.hub.counts.refused,
                         {"server-full": 0, "too-many-connections": 1})


class BucketsTests(SynchronousTestCase):
    def test_cumulative_counts_and_sum(self):
        b = metrics.Buckets((0.1, 1.0))
        for value in (0.05, 0.1, 0.5, 3.0):
            b.observe(value)
        self.assertEqual(b.cumulative(), [("0.1", 2), ("1.0", 3), ("+Inf", 4)])
        self.assertAlmostEqual(b.sum, 3.65)


class FakePoller:
    def __init__(self):
        self.polls = 0

    def poll(self, timeout, maxevents):
        self.polls += 1
        return []

    def register(self, fd, flags):
        return ("registered", fd, flags)


class FakeReactor:
    def __init__(self):
        self._poller = FakePoller()


class TurnTimerTests(SynchronousTestCase):
    def test_times_from_a_poll_to_the_next_and_restores_the_poller(self):
        reactor = FakeReactor()
        poller = reactor._poller
        buckets = metrics.Buckets((10.0,))
        timer = metrics.TurnTimer(reactor, buckets)
        self.assertTrue(timer.start())
        self.assertEqual(reactor._poller.register(3, 1), ("registered", 3, 1))
        for _ in range(3):
            reactor._poller.poll(0.1, 10)
        self.assertEqual(poller.polls, 3)
        self.assertEqual(buckets.counts, [2, 0])  # the first poll has no turn before it
        timer.stop()
        self.assertIs(reactor._poller, poller)

    def test_another_reactor_gets_no_turn_times(self):
        self.assertFalse(metrics.TurnTimer(object(), metrics.Buckets((1.0,))).start())


class FakeService:
    running = True


class FakeFactory:
    input_paused = False


class FakeListener:
    description = "tcp:5000"

    def __init__(self, connected=True):
        self.port = type("Port", (), {"connected": connected})()


class FakeStore:
    write_failure = None

    def __init__(self):
        self.probes = []

    def probe(self):
        d = Deferred()
        self.probes.append(d)
        return d


class HealthTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = FakeStore()
        self.service, self.factory = FakeService(), FakeFactory()
        self.listeners = [FakeListener()]
        self.health = monitor.Health(self.service, self.factory, self.store, self.listeners,
                                     self.clock, probe_timeout=2.0, failure_window=60.0)

    def check(self):
        results = []
        self.health.check().addCallback(results.append)
        return results

    def test_healthy_once_the_store_answers(self):
        got = self.check()
        self.assertEqual(got, [])  # waiting for the probe
        self.store.probes[0].callback(1)
        self.assertEqual(got, [[]])

    def test_one_probe_for_every_request_meanwhile(self):
        first, second = self.check(), self.check()
        self.assertEqual(len(self.store.probes), 1)
        self.store.probes[0].errback(HistoryError("database is locked"))
        self.assertEqual(first, [["the history store failed: database is locked"]])
        self.assertEqual(second, first)
        self.check()
        self.assertEqual(len(self.store.probes), 2)  # the next request probes again

    def test_a_store_that_does_not_answer(self):
        got = self.check()
        self.clock.advance(2.0)
        self.assertEqual(got, [["the history store did not answer within 2 s"]])
        again = self.check()  # still the same probe outstanding: no second one
        self.assertEqual(len(self.store.probes), 1)
        self.store.probes[0].callback(1)  # it answers at last
        self.assertEqual(again, [[]])

    def test_failed_writes_count_for_a_while_unless_a_batch_is_stored(self):
        self.store.probe = lambda: succeed(1)
        self.store.write_failure = (self.clock.seconds(), "disk I/O error")
        self.assertEqual(self.check(), [[
            "the history store failed to store messages: disk I/O error"]])
        self.clock.advance(60.0)
        self.assertEqual(self.check(), [[]])

    def test_stopping_not_listening_and_paused_input(self):
        self.store.probe = lambda: fail(HistoryError("the history writer has stopped"))
        self.service.running = False
        self.listeners.append(FakeListener(connected=False))
        self.factory.input_paused = True
        self.assertEqual(self.check(), [[
            "the server is not running (starting or stopping)",
            "not listening on tcp:5000",
            "input paused: the history store is behind",
            "the history store failed: the history writer has stopped"]])


    def test_a_store_without_probe_or_counts(self):
        health = monitor.Health(self.service, self.factory, object(), self.listeners,
                                self.clock)
        results = []
        health.check().addCallback(results.append)
        self.assertEqual(results, [[]])


class OptionTests(SynchronousTestCase):
    def test_metrics_endpoint(self):
        options = Options()
        options.parseOptions(["--metrics", "9100"])
        self.assertEqual(options["metrics"], "tcp:9100")
        self.assertIsNone(Options().parseOptions([]) or None)

    def test_bad_metrics_endpoint(self):
        from twisted.python.usage import UsageError

        with self.assertRaises(UsageError) as e:
            Options().parseOptions(["--metrics", "nonsense:1"])
        self.assertIn("bad --metrics", str(e.exception))


# -- a real server --------------------------------------------------------------

METRICS_LISTENING = re.compile(r"metrics listening on tcp:(\d+)")


def metrics_port(server):
    for line in list(server.log):
        if METRICS_LISTENING.search(line):
            break
    else:
        line = server.wait_for_log(METRICS_LISTENING)
    return int(METRICS_LISTENING.search(line).group(1))


def get(port, path):
    """(status, body) of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=15) as r:
            return r.status, r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8")


def scrape(port):
    """Every sample of /metrics: {(name, ((label, value), ...)): value}."""
    status, body = get(port, "/metrics")
    assert status == 200, (status, body)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def wait_until(predicate, timeout=30.0, what="a condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class MetricsServerTests(SynchronousTestCase):
    def start(self, *args):
        server = ChatServer("--metrics", "tcp:0:interface=127.0.0.1", *args).start()
        self.addCleanup(server.stop)
        return server, metrics_port(server)

    def client(self, server, nick, json=True, **kw):
        c = server.client(**kw)
        self.addCleanup(c.close)
        if json:
            c.json_mode(nick)
        else:
            c.readline()
            c.send(f"/nick {nick}")
            c.expect_text("in #lobby")
        return c

    def test_values_move_as_clients_chat(self):
        server, port = self.start()
        first = scrape(port)
        self.assertEqual(first[("chat_connections", (("face", "line"),))], 0)
        self.assertEqual(first[("chat_rooms", ())], 1)
        alice = self.client(server, "alice", json=False)
        bob = self.client(server, "bob")
        carol = self.client(server, "carol")
        alice.expect_text("carol joined")
        bob.expect_event("join", nick="carol")

        def delta(before, after, name, labels=()):
            return after[(name, labels)] - before[(name, labels)]

        before = scrape(port)
        self.assertEqual(before[("chat_connections", (("face", "line"),))], 3)
        self.assertEqual(before[("chat_members_registered", ())], 3)
        alice.send("hello all")  # text mode: no echo to alice
        got = [c.expect(lambda line: "hello all" in line) for c in (bob, carol)]
        after = scrape(port)
        self.assertEqual(delta(before, after, "chat_messages_accepted_total"), 1)
        self.assertEqual(delta(before, after, "chat_history_stored_messages_total"), 1)
        self.assertEqual(delta(before, after, "chat_deliveries_total"), 2)
        self.assertEqual(delta(before, after, "chat_out_bytes_total"),
                         sum(len(line.encode()) + 2 for line in got))
        self.assertEqual(delta(before, after, "chat_history_commit_seconds_count"), 1)

        before = after
        bob.send("hi there")  # JSON mode: bob gets his acknowledgement too
        got = [c.expect(lambda line: "hi there" in line) for c in (alice, bob, carol)]
        after = scrape(port)
        self.assertEqual(delta(before, after, "chat_messages_accepted_total"), 1)
        self.assertEqual(delta(before, after, "chat_deliveries_total"), 3)
        self.assertEqual(delta(before, after, "chat_out_bytes_total"),
                         sum(len(line.encode()) + 2 for line in got))

        before = after
        carol.send("/part", "/join dev")
        carol.expect_event("names", room="dev")
        bob.expect_event("part", nick="carol")
        alice.expect_text("carol left")
        after = scrape(port)
        self.assertEqual(after[("chat_rooms", ())], 2)
        self.assertEqual(delta(before, after, "chat_history_reads_total"), 1)  # dev's replay
        carol.send("/quit")
        self.assertTrue(carol.closed())
        wait_until(lambda: scrape(port)[("chat_connections", (("face", "line"),))] == 2,
                   what="carol's connection to be gone")
        turns = scrape(port)[("chat_reactor_turn_seconds_count", ())]
        self.assertGreater(turns, 0)

    def test_limits_and_login_failures(self):
        server, port = self.start("--max-clients", "3", "--max-per-ip", "2", "--rate", "0.01",
                                  "--burst", "4", "--auth", "memory:alice:secret",
                                  "--guests", "yes")
        flood = server.client()
        self.addCleanup(flood.close)
        flood.readline()
        flood.send("/login alice wrong")
        flood.expect_text("login failed")
        flood.send(*[f"/ping {i}" for i in range(8)])  # 3 tokens left: 5 dropped
        flood.send("/quit")  # never rate-limited; read after every line before it
        self.assertTrue(flood.closed())
        values = scrape(port)
        self.assertEqual(values[("chat_login_failures_total", ())], 1)
        self.assertEqual(values[("chat_rate_limited_lines_total", ())], 5)

        wait_until(lambda: scrape(port)[("chat_connections", (("face", "line"),))] == 0,
                   what="the flood's connection to be gone")
        keep = [server.client(), server.client()]
        for c in keep:
            self.addCleanup(c.close)
            c.readline()
        over = server.client()  # a third from 127.0.0.1
        self.addCleanup(over.close)
        over.expect_text("too-many-connections")
        self.assertTrue(over.closed())
        other = server.client(source="127.0.0.2")
        self.addCleanup(other.close)
        other.readline()
        full = server.client(source="127.0.0.3")
        self.addCleanup(full.close)
        full.expect_text("server-full")
        values = scrape(port)
        self.assertEqual(values[("chat_connections_refused_total",
                                 (("reason", "too-many-connections"),))], 1)
        self.assertEqual(values[("chat_connections_refused_total",
                                 (("reason", "server-full"),))], 1)

    def test_healthz_turns_503_while_the_writer_cannot_write(self):
        server, port = self.start()
        self.assertEqual(get(port, "/healthz"), (200, "ok\n"))
        alice = self.client(server, "alice")
        # Another program holds the database's write lock (an open write
        # transaction of the sqlite3 shell, say): the writer waits for it
        # (busy timeout), then fails the batch; the probe goes unanswered.
        db = sqlite3.connect(os.path.join(server.dir, "chat.sqlite"), isolation_level=None)
        self.addCleanup(db.close)
        db.execute("BEGIN IMMEDIATE")
        alice.send("this one cannot be stored")
        status, body = wait_until(
            lambda: (lambda r: r if r[0] == 503 else None)(get(port, "/healthz")),
            what="/healthz to say 503")
        self.assertIn("the history store", body)
        alice.expect_event("error", code="not-stored")
        status, body = get(port, "/healthz")
        self.assertEqual(status, 503)
        self.assertIn("the history store failed to store messages", body)
        self.assertIn("database is locked", body)
        self.assertEqual(scrape(port)[("chat_history_not_stored_messages_total", ())], 1)
        db.execute("ROLLBACK")
        alice.send("this one can")
        alice.expect_event("message", text="this one can")
        self.assertEqual(get(port, "/healthz"), (200, "ok\n"))
        server.stop()
        self.assertRaises(OSError, socket.create_connection, ("127.0.0.1", port), 1)
