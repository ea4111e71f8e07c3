"""Message history end to end: a real ``twistd chat`` process, its SQLite file,
restarts, ``kill -9``, retention, ``:memory:`` and bad database files."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from twisted_chat.history import schema

from .support import ChatServer, twistd_command


class HistoryServerTestCase(SynchronousTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="chat-history-srv-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.db = os.path.join(self.dir, "chat.sqlite")

    # The tests send faster than a person may: no rate limit, and room for
    # clients that read a flood's echoes later.
    unlimited = ("--rate", "0", "--max-backlog", str(64 << 20))

    def start(self, *args):
        server = ChatServer(*self.unlimited, *args, directory=self.dir).start()
        self.addCleanup(server.stop)
        return server

    def client(self, server, nick, json=True):
        c = server.client()
        self.addCleanup(c.close)
        if json:
            c.json_mode(nick)
        else:
            c.readline()
            c.send(f"/nick {nick}")
            c.expect_text("in ")
        return c

    def send_and_ack(self, client, texts):
        """Send ``texts``; return the acknowledged ids (the JSON echoes)."""
        client.send(*texts)
        return [client.expect_event("message", text=t)["id"] for t in texts]

    def run_twistd(self, *args):
        return subprocess.run(twistd_command() + ["-n", "--pidfile=", "chat", "--port",
                                                  "tcp:0:interface=127.0.0.1", *args],
                              cwd=self.dir, capture_output=True, text=True, timeout=60)

    def page_all(self, client, room_size_hint=500, room="lobby"):
        """Every message of ``room``, via /history ROOM before ... paging."""
        client.send(f"/history {room} {room_size_hint}")
        messages = []
        while True:
            page = []
            while True:
                ev = json.loads(client.expect(lambda line: '"history' in line))
                if ev["type"] == "history-end":
                    break
                page.append(ev)
            messages[:0] = page
            if ev["count"] < ev["limit"]:
                return messages
            client.send(f"/history {room} before {ev['oldest']} {room_size_hint}")


class ReplayTests(HistoryServerTestCase):
    def test_default_file_replay_on_join_and_restart(self):
        server = self.start()  # default --db: chat.sqlite in the working directory
        alice = self.client(server, "alice")
        ids = self.send_and_ack(alice, ["one", "two", "three"])
        alice.send("/me waves")
        alice.expect_event("message", text="waves")
        self.assertTrue(os.path.exists(self.db))
        server.stop()  # SIGTERM: a clean stop

        server = self.start()
        bob = self.client(server, "bob")  # json_mode waits for "names"
        replay = [bob.event() for _ in range(5)]
        self.assertEqual([(e["type"], e.get("text")) for e in replay],
                         [("message", "one"), ("message", "two"), ("message", "three"),
                          ("message", "waves"), ("history-end", None)])
        self.assertEqual([e["id"] for e in replay[:3]], ids)
        self.assertTrue(all(e["history"] is True for e in replay[:4]))
        self.assertTrue(replay[3]["action"])
        self.assertEqual(replay[0]["room"], "lobby")
        self.assertEqual(replay[0]["nick"], "alice")
        # Live traffic after the replay is not marked, and ids go on increasing.
        live = self.send_and_ack(bob, ["fresh"])
        self.assertGreater(live[0], ids[-1] + 1)

    def test_text_mode_replay_is_dated_with_a_separator(self):
        server = self.start()
        alice = self.client(server, "alice")
        self.send_and_ack(alice, ["hello"])
        bob = self.client(server, "bob", json=False)
        line = bob.expect_text("<alice> hello")
        self.assertRegex(line, r"^\[\d{4}-\d\d-\d\d \d\d:\d\d\] #lobby <alice> hello$")
        self.assertEqual(bob.readline(), "-- end of history: 1 message in #lobby --")
        alice.send("live")
        self.assertRegex(bob.expect_text("<alice> live"),
                         r"^\[\d\d:\d\d\] #lobby <alice> live$")

    def test_rooms_are_separate_and_matched_ignoring_case(self):
        server = self.start()
        alice = self.client(server, "alice")
        alice.send("/join Dev")
        alice.expect_event("names", room="Dev")
        self.send_and_ack(alice, ["in dev"])
        alice.send("/part Dev")
        alice.expect_event("part", room="Dev")
        self.send_and_ack(alice, ["in lobby"])
        bob = self.client(server, "bob")
        bob.expect_event("message", text="in lobby", history=True)
        bob.send("/join DEV")
        # The room was empty and gone; it comes back as DEV, with its history.
        ev = bob.expect_event("message", history=True)
        self.assertEqual((ev["text"], ev["room"]), ("in dev", "DEV"))
        self.assertEqual(bob.event()["type"], "history-end")

    def test_history_option_and_private_messages(self):
        server = self.start("--history", "2")
        alice = self.client(server, "alice")
        bob = self.client(server, "bob")
        self.send_and_ack(alice, ["a", "b", "c"])
        alice.send("/msg bob secret")
        alice.expect_event("private")
        carol = self.client(server, "carol")
        carol.send("/ping done")
        carol.expect_event("pong")
        got = [line for line in carol.seen if '"history":true' in line]
        self.assertEqual(len(got), 2)
        self.assertNotIn("secret", "".join(carol.seen))
        bob.send("/history lobby 10")
        bob.expect_event("history-end", count=3)
        self.assertNotIn("secret", "".join(line for line in bob.seen if "history" in line))
        conn = sqlite3.connect(self.db)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("SELECT target, text FROM messages WHERE kind = 'private'")
                         .fetchall(), [("bob", "secret")])

    def test_history_zero_means_no_replay(self):
        server = self.start("--history", "0")
        alice = self.client(server, "alice")
        self.send_and_ack(alice, ["x"])
        bob = self.client(server, "bob")
        bob.send("/ping")
        bob.expect_event("pong")
        self.assertFalse([line for line in bob.seen if "history" in line])
        bob.send("/history")  # still available on demand
        self.assertEqual(bob.expect_event("message", history=True)["text"], "x")

    def test_paging_and_cap(self):
        server = self.start()
        alice = self.client(server, "alice")
        texts = [f"msg {i}" for i in range(520)]
        ids = self.send_and_ack(alice, texts)
        alice.send("/history lobby 9999")
        end = alice.expect_event("history-end")
        self.assertEqual((end["count"], end["limit"]), (500, 500))
        self.assertEqual(end["oldest"], ids[20])
        alice.send(f"/history lobby before {ids[20]} 15")
        page = [alice.expect_event("message", history=True) for _ in range(15)]
        self.assertEqual([e["text"] for e in page], texts[5:20])
        alice.send("/history lobby before x")
        self.assertEqual(alice.expect_event("error")["code"], "usage")
        all_messages = self.page_all(alice, 200)
        self.assertEqual([e["id"] for e in all_messages], ids)


class RoomsAtStartTests(HistoryServerTestCase):
    def test_the_first_clients_find_the_rooms_as_kept(self):
        # The rooms are read in the store's thread, before the server
        # listens; many rooms make that read long (a second or so here), and
        # a client served meanwhile found empty rooms: no topic, no ban, and
        # the first joiner of a room made its operator.
        conn = schema.connect(self.db)
        with schema.immediate(conn):  # one transaction
            conn.executemany("INSERT INTO rooms (key, name, topic) VALUES (?, ?, ?)",
                             [(f"r{i}", f"R{i}", f"topic {i}") for i in range(150_000)])
            conn.execute("INSERT INTO room_ops (room, account) VALUES ('r149999', 'alice')")
            conn.execute("INSERT INTO rooms (key, name, topic) VALUES ('dev', 'Dev', 'plans')")
            conn.execute("INSERT INTO room_bans (room, position, entry, nick, by, t)"
                         " VALUES ('dev', 0, 'address:127.0.0.1', 'troll', 'alice', 1.0)")
        conn.close()
        server = self.start()
        first = self.client(server, "first")
        first.send("/join r149999")
        # A room with an operator account is not the first joiner's to run
        # (an operator of it would be named here).
        self.assertEqual(first.expect_event("names", room="r149999")["ops"], [])
        self.assertEqual(first.expect_event("topic", room="r149999")["topic"], "topic 149999")
        first.send("/join dev")
        self.assertEqual(first.expect_event("error")["code"], "banned")


class MemoryModeTests(HistoryServerTestCase):
    def test_memory_keeps_history_while_running_and_writes_no_file(self):
        server = self.start("--db", ":memory:")
        server.logged("history: in memory only")
        alice = self.client(server, "alice")
        self.send_and_ack(alice, ["fleeting"])
        bob = self.client(server, "bob")
        self.assertEqual(bob.expect_event("message", history=True)["text"], "fleeting")
        server.stop()
        self.assertFalse([name for name in os.listdir(self.dir) if "sqlite" in name
                          or "memory" in name])
        server = self.start("--db", ":memory:")
        carol = self.client(server, "carol")
        carol.send("/history")
        self.assertEqual(carol.expect_event("history-end")["count"], 0)


class RetentionTests(HistoryServerTestCase):
    def test_old_messages_are_pruned_at_start(self):
        from twisted_chat.history import schema

        conn = schema.connect(self.db)
        now = time.time()
        rows = [("message", "lobby", "lobby", "old", None, "ancient", 0, now - 3 * 86400),
                ("message", "lobby", "lobby", "old", None, "recent", 0, now - 3600)]
        conn.executemany("INSERT INTO messages (kind, room, room_name, nick, target, text,"
                         " action, t) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.close()
        server = self.start("--history-days", "2")
        server.logged("pruned 1 message")
        bob = self.client(server, "bob")
        self.assertEqual(bob.expect_event("message", history=True)["text"], "recent")
        self.assertEqual(bob.event()["type"], "history-end")

    def test_bad_retention_and_history_options(self):
        for args in (["--history-days", "0"], ["--history-days", "-1"],
                     ["--history-days", "nan"], ["--history", "-1"], ["--history", "501"]):
            result = self.run_twistd(*args)
            self.assertNotEqual(result.returncode, 0, args)
            self.assertIn("--history", result.stdout + result.stderr)



class BadDatabaseTests(HistoryServerTestCase):
    def assertClearFailure(self, result, fragment):
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(fragment, output)
        self.assertNotIn("Traceback", output)

    def test_corrupt_file(self):
        with open(self.db, "wb") as f:
            f.write(b"garbage, not SQLite\n" * 200)
        result = self.run_twistd("--db", self.db)
        self.assertClearFailure(result, f"cannot use --db {self.db}: it is corrupt or not an "
                                        "SQLite database")
        with open(self.db, "rb") as f:
            self.assertTrue(f.read().startswith(b"garbage"))  # left as it was

    def test_missing_directory_and_directory_as_file(self):
        self.assertClearFailure(self.run_twistd("--db", os.path.join(self.dir, "no", "x.db")),
                                "does not exist")
        self.assertClearFailure(self.run_twistd("--db", self.dir), "not a regular file")

    def test_newer_schema(self):
        from twisted_chat.history import schema

        conn = schema.connect(self.db)
        conn.execute("UPDATE schema_version SET version = 99")
        conn.close()
        self.assertClearFailure(self.run_twistd("--db", self.db), "newer twisted-chat")

    def test_unwritable_file(self):
        if os.geteuid() == 0:
            # root writes anything; a read-only file system is what stops it,
            # which a test cannot make. The check is os.access(W_OK).
            raise self.skipTest("running as root: file permissions do not apply")
        open(self.db, "wb").close()
        os.chmod(self.db, 0o444)
        self.assertClearFailure(self.run_twistd("--db", self.db), "not readable and writable")

    def test_failure_when_the_service_opens_it(self):
        # The option check passes (a fresh path), but the file is garbage by
        # the time the store opens it: one log line, exit status 1.
        env = dict(os.environ, CHAT_TEST_CORRUPT=self.db)
        with open(os.path.join(self.dir, "corrupt_then_run.py"), "w") as f:
            f.write(
                "import os, sys\n"
                "from twisted_chat import tap\n"
                "orig = tap.Options.postOptions\n"
                "def post(self):\n"
                "    orig(self)\n"
                "    open(os.environ['CHAT_TEST_CORRUPT'], 'wb').write(b'junk' * 500)\n"
                "tap.Options.postOptions = post\n"
                "from twisted.scripts.twistd import run\n"
                "sys.argv[0] = 'twistd'\n"
                "run()\n")
        result = subprocess.run(
            [sys.executable, "corrupt_then_run.py", "-n", "--pidfile=", "chat", "--port",
             "tcp:0:interface=127.0.0.1", "--db", self.db],
            cwd=self.dir, env=env, capture_output=True, text=True, timeout=60)
        self.assertClearFailure(result, "it is corrupt or not an SQLite database")


class CrashTests(HistoryServerTestCase):
    """The durability contract: whatever was acknowledged survives kill -9."""

    def test_every_acknowledged_message_survives_sigkill(self):
        server = self.start("--history", "0")
        senders = [self.client(server, nick) for nick in ("alice", "bob", "carol")]
        per_sender = 200_000  # a bound; the kill comes long before
        acked = {c: [] for c in senders}  # (id, text) in arrival order

        def blast(client, nick):
            # A socket object of its own: the reading thread keeps changing
            # the client socket's timeout, which would cut sendall short.
            out = client.sock.dup()
            out.settimeout(60)
            try:
                for start in range(0, per_sender, 100):
                    out.sendall("".join(f"{nick} says {i}\r\n"
                                        for i in range(start, start + 100)).encode())
            except OSError:
                pass  # the server is gone: the rest was never sent
            finally:
                out.close()

        threads = [threading.Thread(target=blast, args=(c, c_nick), daemon=True)
                   for c, c_nick in zip(senders, ("alice", "bob", "carol"))]
        for t in threads:
            t.start()

        def collect(client, nick, until):
            while len(acked[client]) < until:
                ev = client.expect_event("message", nick=nick)
                acked[client].append((ev["id"], ev["text"]))

        # Mid-traffic: each sender has some acknowledgements, more are coming.
        for c, nick in zip(senders, ("alice", "bob", "carol")):
            collect(c, nick, 100)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(15)
        # Echoes that reached the client before the kill are acknowledgements
        # too: read them all up to the end of the stream.
        for c, nick in zip(senders, ("alice", "bob", "carol")):
            try:
                collect(c, nick, per_sender + 1)
            except (EOFError, AssertionError, OSError):
                pass
        for t in threads:
            t.join(15)
        total = sum(len(v) for v in acked.values())
        self.assertLess(total, 3 * per_sender, "the kill came after all traffic: too late")

        server = self.start("--history", "0")
        reader = self.client(server, "reader")
        stored = {e["id"]: e for e in self.page_all(reader, 500)}
        for c, nick in zip(senders, ("alice", "bob", "carol")):
            ids = [i for i, _ in acked[c]]
            self.assertEqual(ids, sorted(ids))  # acknowledged in order
            # The acknowledged ones are exactly a prefix of what was sent.
            self.assertEqual([text for _, text in acked[c]],
                             [f"{nick} says {i}" for i in range(len(acked[c]))])
            for msg_id, text in acked[c]:
                self.assertIn(msg_id, stored, f"acknowledged {msg_id} ({text}) lost")
                self.assertEqual((stored[msg_id]["text"], stored[msg_id]["nick"]),
                                 (text, nick))
        history_ids = list(stored)
        self.assertEqual(history_ids, sorted(history_ids))


def writer_pids(server_pid):
    """Pids of the history writer processes whose parent is ``server_pid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == server_pid and b"twisted_chat.history.writer" in cmdline:
            pids.append(int(entry))
    return pids


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


class WriterProcessTests(HistoryServerTestCase):
    """The writer is a child process of the server: its death loses nothing
    acknowledged and stops nobody; the server's death ends it."""

    def test_a_killed_writer_is_replaced_and_nothing_acknowledged_is_lost(self):
        server = self.start("--history", "0")
        alice = self.client(server, "alice")
        acked = self.send_and_ack(alice, ["before"])
        (pid,) = wait_for(lambda: writer_pids(server.proc.pid))
        os.kill(pid, signal.SIGKILL)
        server.wait_for_log(r"history: the writer process ended")
        # Each message now is either stored (acknowledged) or refused with
        # not-stored; none is silently lost, and the server carries on.
        outcomes = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            text = f"after {len(outcomes)}"
            alice.send(text)
            ev = json.loads(alice.expect(lambda line: '"message"' in line or "not-stored" in line))
            outcomes.append(ev)
            if ev["type"] == "message":
                acked.append(ev["id"])
                break
            time.sleep(0.2)
        self.assertEqual(outcomes[-1]["type"], "message", outcomes)
        self.assertTrue(all(e["type"] == "error" and e["code"] == "not-stored"
                            for e in outcomes[:-1]), outcomes)
        (new_pid,) = writer_pids(server.proc.pid)
        self.assertNotEqual(new_pid, pid)
        acked += self.send_and_ack(alice, ["one more"])
        server.stop()
        server = self.start()
        reader = self.client(server, "reader")
        stored = [e["id"] for e in self.page_all(reader)]
        self.assertEqual(stored, acked)

    def test_the_writer_ends_with_the_server(self):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            server = self.start()
            alice = self.client(server, "alice")
            self.send_and_ack(alice, ["hello"])
            (pid,) = wait_for(lambda: writer_pids(server.proc.pid))
            server.proc.send_signal(sig)
            server.proc.wait(15)

            def gone():
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie
                except OSError:
                    return True

            wait_for(gone, 10)
            alice.close()
            server.stop()
