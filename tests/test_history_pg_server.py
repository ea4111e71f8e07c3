"""``twistd chat --db postgresql://...`` end to end: a real server process on
a real PostgreSQL (tests/pg_support): acknowledged messages and a room's
topic survive a restart; PostgreSQL stopped in the middle of traffic gives
not-stored and the server carries on and recovers once it is back; and the
one-line errors at start (unreachable, not PostgreSQL, no psycopg)."""

import json
import os
import time

from .pg_support import PostgresServer, PostgresTestCase
from .test_history_server import HistoryServerTestCase
from .test_irc_server import ChatHistoryChecks, IRCServerTestCase


class PostgresServerTestCase(PostgresTestCase, HistoryServerTestCase):
    def setUp(self):
        HistoryServerTestCase.setUp(self)
        PostgresTestCase.setUp(self)

    def start(self, *args):
        return HistoryServerTestCase.start(self, "--db", self.url, *args)

    def assertClearFailure(self, result, fragment):
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(fragment, output)
        self.assertNotIn("Traceback", output)


class RestartTests(PostgresServerTestCase):
    def test_history_and_topic_survive_a_restart(self):
        server = self.start()
        server.logged("history: postgresql://")
        alice = self.client(server, "alice")
        ids = self.send_and_ack(alice, ["one", "two", "three"])
        self.assertEqual(ids, [1, 2, 3])
        alice.send("/join dev")
        alice.expect_event("names", room="dev")
        alice.send("/topic dev kept in postgres")
        alice.expect_event("topic", room="dev")
        alice.send("/say dev in dev")
        alice.expect_event("message", text="in dev")
        server.stop()  # SIGTERM: a clean stop
        self.assertFalse(os.path.exists(os.path.join(self.dir, "chat.sqlite")))

        server = self.start()
        bob = self.client(server, "bob")
        replay = [bob.event() for _ in range(4)]
        self.assertEqual([(e["type"], e.get("text"), e.get("id")) for e in replay],
                         [("message", "one", 1), ("message", "two", 2),
                          ("message", "three", 3), ("history-end", None, None)])
        bob.send("/join dev")
        topic = bob.expect_event("topic", room="dev")
        self.assertEqual((topic["topic"], topic["by"]), ("kept in postgres", "alice"))
        self.assertEqual(bob.expect_event("message", history=True)["text"], "in dev")
        live = self.send_and_ack(bob, ["fresh"])
        self.assertEqual(live, [5])
        self.assertEqual(self.pg.sql(self.url, "SELECT count(*) FROM messages"), [(5,)])


class OutageTests(PostgresServerTestCase):
    def setUp(self):
        super().setUp()
        self.own = PostgresServer().start()  # this test stops it
        self.addCleanup(self.own.destroy)
        self.url = self.own.create_database()

    def test_postgres_stopped_mid_traffic_gives_not_stored_then_recovers(self):
        server = self.start("--history", "50")
        alice = self.client(server, "alice")
        acked = self.send_and_ack(alice, [f"before {i}" for i in range(20)])
        self.own.stop()
        refused = 0
        for i in range(5):
            alice.send(f"during {i}")
            ev = json.loads(alice.expect(lambda line: '"message"' in line or "not-stored" in line))
            self.assertEqual((ev["type"], ev.get("code")), ("error", "not-stored"))
            refused += 1
        server.wait_for_log("could not store")
        self.assertIsNone(server.proc.poll())  # still running

        self.own.start()
        # Back: the next messages are stored again (the store reconnects).
        deadline = time.monotonic() + 15
        while True:
            alice.send("after")
            ev = json.loads(alice.expect(lambda line: '"message"' in line or "not-stored" in line))
            if ev["type"] == "message":
                acked.append(ev["id"])
                break
            self.assertLess(time.monotonic(), deadline, "never stored again")
            time.sleep(0.2)
        acked += self.send_and_ack(alice, ["after 2"])
        self.assertEqual(acked, list(range(1, 23)))  # no id lost to the failures
        bob = self.client(server, "bob")
        got = []
        while True:
            ev = bob.event()
            if ev["type"] == "history-end":
                break
            if ev.get("history"):
                got.append((ev["id"], ev["text"]))
        self.assertEqual([i for i, _ in got], acked)
        self.assertFalse(any(text.startswith("during") for _, text in got))


class StartErrorTests(PostgresServerTestCase):
    def test_unreachable_database_is_one_line(self):
        url = f"postgresql://postgres:s3cret@127.0.0.1:{self.pg.port}/nothere"
        result = self.run_twistd("--db", url)
        self.assertClearFailure(result, "cannot use --db postgresql://postgres:***@127.0.0.1:")
        self.assertIn('database "nothere" does not exist', result.stdout + result.stderr)
        self.assertNotIn("s3cret", result.stdout + result.stderr)

    def test_a_url_that_is_not_postgresql(self):
        result = self.run_twistd("--db", "mysql://chat@db.lan/chat")
        self.assertClearFailure(result, "mysql:// is not a database this server knows")

    def test_without_psycopg(self):
        # A psycopg that cannot be imported, first on the path.
        fake = os.path.join(self.dir, "nopsycopg", "psycopg")
        os.makedirs(fake)
        with open(os.path.join(fake, "__init__.py"), "w") as f:
            f.write("raise ImportError('no psycopg here')\n")
        env = dict(os.environ, PYTHONPATH=os.path.dirname(fake))
        import subprocess

        from .support import twistd_command
        result = subprocess.run(
            twistd_command() + ["-n", "--pidfile=", "chat", "--port", "tcp:0:interface=127.0.0.1",
                                "--db", self.url],
            cwd=self.dir, capture_output=True, text=True, timeout=60, env=env)
        self.assertClearFailure(result, "PostgreSQL needs psycopg, which is not installed: "
                                        "pip install 'twisted-chat[cluster]'")


class IRCChatHistoryTests(PostgresTestCase, ChatHistoryChecks, IRCServerTestCase):
    """draft/chathistory with PostgreSQL as the store (the same checks as
    on SQLite, tests/test_irc_server.py)."""

    def setUp(self):
        PostgresTestCase.setUp(self)
        self.db = self.url
        IRCServerTestCase.setUp(self)
