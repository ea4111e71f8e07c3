"""Hostile and unlucky clients against a real ``twistd chat`` over loopback:
slow readers, floods, bad input, connection limits, idle peers, shutdown."""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .certs import self_signed
from .support import ChatServer, LineClient
from .test_server import ServerTestCase


def stalled_client(port, nick):
    """A raw client with a tiny receive buffer that never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"/nick {nick}\r\n".encode())
    return sock


class SlowReaderTests(ServerTestCase):
    server_args = ("--max-backlog", "65536", "--rate", "0")

    def test_stalled_reader_is_cut_off_while_others_chat(self):
        alice, bob = self.client("alice"), self.client("bob")
        slow = stalled_client(self.server.port, "slow")
        self.addCleanup(slow.close)
        bob.expect_event("join", nick="slow")
        filler = "x" * 2000
        sent = 0
        # Loopback buffers hold a few MB; the server must cut the reader off
        # long before 4000 * 2 KB, and bob must get every message on the way.
        while not self.server.grep("slow consumer") and sent < 4000:
            alice.send(f"m{sent} {filler}")
            ev = bob.expect_event("message", nick="alice", timeout=5)
            self.assertEqual(ev["text"], f"m{sent} {filler}")
            sent += 1
        line = self.server.wait_for_log(r"slow consumer 127\.0\.0\.1:\d+ slow: over 65536 bytes")
        self.assertIn("disconnecting", line)
        # (the quit may already have been read past while waiting for messages)
        parts = [json.loads(line) for line in bob.seen if '"type":"quit"' in line]
        part = parts[0] if parts else bob.expect_event("quit", nick="slow")
        self.assertEqual((part["nick"], part["reason"]), ("slow", "disconnected"))
        # Life goes on, promptly, for everybody else.
        bob.send("still here")
        self.assertEqual(alice.expect_event("message", nick="bob")["text"], "still here")
        alice.send("/who")
        self.assertEqual(sorted(alice.expect_event("names")["nicks"]), ["alice", "bob"])


class FloodTests(ServerTestCase):
    server_args = ("--rate", "2", "--burst", "5")

    def test_flood_is_rate_limited_and_not_broadcast(self):
        alice, bob = self.client("alice"), self.client("bob")
        # Let the tokens /mode and /nick used refill.
        time.sleep(1.2)
        alice.send(*[f"flood {i}" for i in range(40)])
        alice.expect_event("error", code="rate-limited")
        time.sleep(0.6)  # one token back: the next line gets through
        alice.send("after the storm")
        alice.expect_event("message", text="after the storm")
        echoed = [json.loads(line)["text"] for line in alice.seen
                  if '"type":"message"' in line and "flood" in line]
        limited = [line for line in alice.seen if "rate-limited" in line]
        self.assertEqual(len(limited), 1)  # one error per stretch of dropped lines
        self.assertGreaterEqual(len(echoed), 5)
        self.assertLessEqual(len(echoed), 7)  # the burst, plus a token or two of refill
        self.assertEqual(echoed, [f"flood {i}" for i in range(len(echoed))])
        bob.expect_event("message", text="after the storm")
        got = [json.loads(line)["text"] for line in bob.seen
               if '"type":"message"' in line and "flood" in line]
        self.assertEqual(got, echoed)

    def test_nick_storm_is_limited(self):
        alice, bob = self.client("alice"), self.client("bob")
        alice.send(*[f"/nick storm{i}" for i in range(30)])
        alice.expect_event("error", code="rate-limited")
        alice.send("/quit")  # never limited
        alice.expect_event("bye")
        bob.expect_event("quit", reason="quit")
        renames = [line for line in bob.seen if '"type":"nick"' in line]
        self.assertLess(len(renames), 10)


class BadInputTests(ServerTestCase):
    server_args = ("--max-line", "100")

    def test_bad_lines_get_errors_and_hurt_nobody(self):
        alice, bob = self.client("alice"), self.client("bob")
        # An over-long line split over several sends: its tail is discarded
        # up to the newline, and the next line still arrives.
        alice.send_raw(b"y" * 150)
        alice.send_raw(b"z" * 150 + b" tail\r\nafter long\r\n")
        alice.expect_event("error", code="line-too-long")
        self.assertEqual(bob.expect_event("message", nick="alice")["text"], "after long")
        alice.send_raw(b"\xff\xfe bad bytes\r\n")
        alice.expect_event("error", code="bad-encoding")
        alice.send_raw(b"\r\n   \r\n\n")  # blank lines: ignored, no error
        alice.send_raw(b"esc \x1b[2J\x1b]0;pwned\x07 nul \x00 c1 \xc2\x9b31m done\r\n")
        ev = bob.expect_event("message", nick="alice")
        self.assertEqual(ev["text"], "esc [2J]0;pwned nul  c1 31m done")
        alice.send_raw(bytes(0x80 + i % 64 for i in range(90)) + b"\r\n")
        alice.expect_event("error", code="bad-encoding")
        alice.send_raw(bytes(range(256)) * 4 + b"\r\n")  # binary garbage, newlines and all
        alice.send("/ping ok")
        alice.expect_event("pong", token="ok")
        self.assertFalse([line for line in alice.seen
                          if '"type":"error"' in line and "line-too-long" not in line
                          and "bad-encoding" not in line])
        # A half line at disconnect goes nowhere and breaks nothing.
        carol = self.client("carol")
        carol.send_raw(b"half a li")
        carol.close()
        bob.expect_event("quit", nick="carol", reason="disconnected")
        bob.send("/ping x")
        bob.expect_event("pong", token="x")
        self.assertFalse([line for line in bob.seen if "half" in line])
        for line in bob.seen:  # whatever got through is clean
            self.assertFalse([c for c in line if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0], line)
        self.assertFalse(self.server.grep("Traceback|Unhandled"))


class ConnectionLimitTests(ServerTestCase):
    server_args = ("--max-clients", "3", "--max-per-ip", "2")

    def test_per_ip_and_total_limits(self):
        a1, a2 = self.client("a1"), self.client("a2")
        a3 = self.server.client()
        self.addCleanup(a3.close)
        self.assertTrue(a3.readline().startswith("!! too-many-connections:"))
        self.assertTrue(a3.closed())
        # Another loopback address is another peer to the server.
        b1 = self.server.client(source="127.0.0.2")
        self.addCleanup(b1.close)
        b1.json_mode("b1")
        c1 = self.server.client(source="127.0.0.3")
        self.addCleanup(c1.close)
        self.assertTrue(c1.readline().startswith("!! server-full:"))
        self.assertTrue(c1.closed())
        # Existing users are untouched; a freed slot is usable again.
        a1.send("still fine")
        self.assertEqual(b1.expect_event("message", nick="a1")["text"], "still fine")
        a2.send("/quit")
        a2.closed()
        b1.expect_event("quit", nick="a2")
        c2 = self.client("c2")
        c2.send("/who")
        self.assertEqual(sorted(c2.expect_event("names")["nicks"]), ["a1", "b1", "c2"])
        self.assertTrue(self.server.grep("refused 127.0.0.1:\\d+: too-many-connections"))
        self.assertTrue(self.server.grep("refused 127.0.0.3:\\d+: server-full"))


class IdleTests(ServerTestCase):
    server_args = ("--idle-timeout", "2")

    def test_idle_client_is_dropped_active_one_stays(self):
        idle, busy = self.client("idle"), self.client("busy")
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            busy.send("/ping")
            busy.expect_event("pong")
            time.sleep(0.2)
        idle.expect_event("bye", reason="idle timeout")
        self.assertTrue(idle.closed())
        busy.send("/ping")
        busy.expect_event("pong")
        parts = [json.loads(line) for line in busy.seen if '"type":"quit"' in line]
        self.assertEqual([(p["nick"], p["reason"]) for p in parts], [("idle", "disconnected")])
        self.server.wait_for_log(r"disconnect 127\.0\.0\.1:\d+ idle: idle for 2 s")

    def test_keepalive_is_on(self):
        try:
            subprocess.run(["ss", "-V"], capture_output=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            raise SkipTest("ss (iproute2) is not installed")
        self.client("kept")
        # ss shows the keepalive timer once no data is in flight (until then
        # the retransmission timer is the one shown).
        deadline = time.monotonic() + 5
        while True:
            out = subprocess.run(
                ["ss", "-tnoH", "state", "established", f"( sport = :{self.server.port} )"],
                capture_output=True, text=True, check=True).stdout
            if "keepalive" in out or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertIn("timer:(keepalive", out)


class ShutdownTests(SynchronousTestCase):
    def start(self, *args):
        server = ChatServer(*args).start()
        self.addCleanup(server.stop)
        return server

    def test_sigterm_says_bye_to_everybody(self):
        server = self.start()
        alice = server.client()
        self.addCleanup(alice.close)
        alice.json_mode("alice")
        bob = server.client()  # text mode, not even registered yet
        self.addCleanup(bob.close)
        bob.expect_text("welcome")  # the reactor is running
        server.proc.send_signal(signal.SIGTERM)
        self.assertEqual(alice.expect_event("bye")["reason"], "server shutting down")
        self.assertEqual(bob.expect_text("bye"), "-- bye: server shutting down")
        self.assertTrue(alice.closed())
        self.assertTrue(bob.closed())
        server.proc.wait(10)
        server.wait_for_log("shutting down: bye to 2 connections")
        # Nobody was told about the others leaving: the bye was the last word.
        self.assertEqual(json.loads(alice.seen[-1])["type"], "bye")

    def test_shutdown_is_bounded_by_a_stalled_client(self):
        server = self.start("--max-backlog", "50000000", "--rate", "0",
                            "--shutdown-timeout", "1")
        alice = server.client()
        self.addCleanup(alice.close)
        alice.json_mode("alice")
        slow = stalled_client(server.port, "slow")
        self.addCleanup(slow.close)
        alice.expect_event("join", nick="slow")
        # Fill the stalled reader's socket and the server's buffers for it.
        for i in range(1500):
            alice.send(f"m{i} " + "x" * 2000)
        alice.expect_event("message", text="m1499 " + "x" * 2000)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        alice.expect_event("bye")
        server.proc.wait(10)
        self.assertLess(time.monotonic() - started, 9)  # 1 s + slack for a busy machine
        server.wait_for_log("aborting 1 connections still open after 1 s")


class TLSSlowReaderTests(SynchronousTestCase):
    """The output path through a TLS transport: same bound, same bye."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="chat-tls-limits-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        _, self.cert = self_signed(self.dir, "localhost")
        self.server = ChatServer(
            "--port", "ssl:0:interface=127.0.0.1:privateKey=server.key:certKey=server.pem",
            "--max-backlog", "65536", "--rate", "0", directory=self.dir).start()
        self.addCleanup(self.server.stop)
        self.tls_port = self.server.listener("ssl:")
        self.assertTrue(os.path.exists(self.cert))

    def test_stalled_tls_reader_is_cut_off_and_shutdown_reaches_tls_clients(self):
        context = ssl.create_default_context(cafile=self.cert)
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        raw.connect(("127.0.0.1", self.tls_port))
        slow = context.wrap_socket(raw, server_hostname="localhost")
        self.addCleanup(slow.close)
        slow.sendall(b"/nick slow\r\n")
        alice = self.server.client()
        self.addCleanup(alice.close)
        alice.json_mode("alice")
        bob = LineClient(self.tls_port, tls=context, server_hostname="localhost")
        self.addCleanup(bob.close)
        bob.json_mode("bob")
        for _ in range(100):  # the TLS handshake and /nick may finish after alice's
            alice.send("/who")
            if "slow" in alice.expect_event("names")["nicks"]:
                break
            time.sleep(0.05)
        else:
            self.fail("the stalled TLS client never registered")
        sent = 0
        while not self.server.grep("slow consumer") and sent < 4000:
            alice.send(f"m{sent} " + "x" * 2000)
            bob.expect_event("message", text=f"m{sent} " + "x" * 2000, timeout=5)
            sent += 1
        self.server.wait_for_log(r"slow consumer 127\.0\.0\.1:\d+ slow: over 65536 bytes")
        bob.send("/who")
        bob.expect_event("names", nicks=["alice", "bob"])
        self.server.proc.send_signal(signal.SIGTERM)
        self.assertEqual(bob.expect_event("bye")["reason"], "server shutting down")
        self.assertTrue(bob.closed())
