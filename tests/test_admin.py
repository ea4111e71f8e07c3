"""``twisted-chat-admin``: an online backup of a real server's database under
load (every message acknowledged before the backup is in the copy, which
passes its integrity check), the listings, and errors without tracebacks."""

import io
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

from twisted.internet.defer import maybeDeferred
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat import admin, passwords
from twisted_chat.history import lock, room_message, schema, writer
from twisted_chat.history.sqlite import SQLiteHistory

from .support import ChatServer, twistd_command


def run_admin(*args, timeout=120):
    """``python -m twisted_chat.admin ARGS`` (the console script's main)."""
    return subprocess.run([sys.executable, "-m", "twisted_chat.admin", *args],
                          capture_output=True, text=True, timeout=timeout)


def prefill(path, count, rooms=("lobby", "dev")):
    """A history database holding ``count`` messages, as the server writes them."""
    conn = schema.connect(path)
    try:
        batch = []
        for i in range(count):
            room = rooms[i % len(rooms)]
            batch.append(room_message(room, room.capitalize() if room == "dev" else room,
                                      "filler", f"message {i} " + "x" * 100,
                                      1_700_000_000.0 + i))
            if len(batch) == 5000:
                writer.write_batch(conn, batch)
                batch = []
        if batch:
            writer.write_batch(conn, batch)
    finally:
        conn.close()


class Sender(threading.Thread):
    """Sends messages in bursts of ``burst`` and reads their acknowledgements
    (JSON echoes, sent only once stored), recording each acknowledged id."""

    def __init__(self, client, name, burst=20):
        super().__init__(daemon=True)
        self.client, self.name, self.burst = client, name, burst
        self.acked = []  # ids, in the order their acknowledgements arrived
        self.stop = threading.Event()
        self.error = None

    def run(self):
        n = 0
        try:
            while not self.stop.is_set():
                texts = [f"{self.name} {n + i}" for i in range(self.burst)]
                n += self.burst
                self.client.send(*texts)
                for text in texts:
                    self.acked.append(self.client.expect_event("message", text=text)["id"])
        except BaseException as e:  # reported by the test
            self.error = e


class BackupUnderLoadTests(SynchronousTestCase):
    def test_backup_while_the_server_takes_messages(self):
        directory = tempfile.mkdtemp(prefix="chat-admin-")
        self.addCleanup(shutil.rmtree, directory, True)
        db = os.path.join(directory, "chat.sqlite")
        prefill(db, 100_000)  # some megabytes: the copy takes a while
        server = ChatServer("--rate", "0", "--max-backlog", str(64 << 20), "--history", "0",
                            directory=directory).start()
        self.addCleanup(server.stop)
        senders = []
        for name in ("alice", "bob"):
            client = server.client()
            self.addCleanup(client.close)
            client.json_mode(name)
            senders.append(Sender(client, name))
        for s in senders:
            s.start()

        def stop_senders():
            for s in senders:
                s.stop.set()
            for s in senders:
                s.join(30)

        self.addCleanup(stop_senders)
        deadline = time.monotonic() + 30
        while sum(len(s.acked) for s in senders) < 500 and time.monotonic() < deadline:
            time.sleep(0.02)
        acked_before = set()
        for s in senders:
            acked_before.update(list(s.acked))
        self.assertGreaterEqual(len(acked_before), 500)
        dest = os.path.join(directory, "backup.sqlite")
        done = run_admin("backup", db, dest)
        acked_during = sum(len(s.acked) for s in senders) - len(acked_before)
        stop_senders()
        for s in senders:
            self.assertIsNone(s.error)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("integrity check ok", done.stdout)
        # The server went on acknowledging messages while it copied.
        self.assertGreater(acked_during, 0)

        copy = sqlite3.connect(dest)
        self.addCleanup(copy.close)
        self.assertEqual(copy.execute("PRAGMA integrity_check").fetchall(), [("ok",)])
        self.assertEqual(copy.execute("PRAGMA journal_mode").fetchone()[0], "delete")
        ids = {row[0] for row in copy.execute("SELECT id FROM messages")}
        self.assertEqual(acked_before - ids, set())
        self.assertEqual(schema.version_of(copy), schema.LATEST)
        # One snapshot: the copy is the original up to its newest message, no holes.
        server.stop()
        original = sqlite3.connect(db)
        self.addCleanup(original.close)
        newest = max(ids)
        self.assertEqual(ids, {row[0] for row in original.execute(
            "SELECT id FROM messages WHERE id <= ?", (newest,))})
        self.assertEqual(os.listdir(directory).count("backup.sqlite"), 1)
        self.assertEqual([f for f in os.listdir(directory) if ".partial" in f], [])


class AdminTests(SynchronousTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="chat-admin-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.db = os.path.join(self.dir, "chat.sqlite")

    def main(self, *argv):
        out = io.StringIO()
        code = admin.main(list(argv), out=out)
        return code, out.getvalue()

    def test_rooms(self):
        prefill(self.db, 5)
        code, out = self.main("rooms", self.db)
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(),
                         ["ROOM", "MESSAGES", "LAST", "MESSAGE", "OPERATORS", "TOPIC"])
        self.assertEqual(lines[1].split()[:2], ["Dev", "2"])
        self.assertEqual(lines[2].split()[:2], ["lobby", "3"])
        self.assertIn("2023-11-14 22:13:24 UTC", lines[2])

    def test_accounts(self):
        path = os.path.join(self.dir, "accounts.passwd")
        for name in ("bob", "Alice"):
            passwords.set_account(path, name, passwords.hash_password("pw", ln=4))
        code, out = self.main("accounts", path)
        self.assertEqual(code, 0)
        self.assertEqual([line.split() for line in out.splitlines()],
                         [["NAME", "HASH"], ["Alice", "scrypt", "ln=4,r=8,p=1"],
                          ["bob", "scrypt", "ln=4,r=8,p=1"]])
        self.assertNotIn("$", out)

    def test_backup_refuses_an_existing_destination(self):
        prefill(self.db, 1)
        dest = os.path.join(self.dir, "exists")
        with open(dest, "w") as f:
            f.write("keep me")
        done = run_admin("backup", self.db, dest)
        self.assertEqual(done.returncode, 1)
        self.assertIn("exists", done.stderr)
        with open(dest) as f:
            self.assertEqual(f.read(), "keep me")

    def test_clear_errors_without_tracebacks(self):
        prefill(self.db, 1)
        not_db = os.path.join(self.dir, "not.sqlite")
        with open(not_db, "wb") as f:
            f.write(b"hello, this is not a database at all" * 100)
        foreign = os.path.join(self.dir, "foreign.sqlite")
        sqlite3.connect(foreign).execute("CREATE TABLE t (x)").connection.close()
        cases = [
            (("rooms", os.path.join(self.dir, "missing.sqlite")), "does not exist"),
            (("rooms", not_db), "not an SQLite database"),
            (("rooms", foreign), "not a twisted-chat history database"),
            (("backup", self.db, os.path.join(self.dir, "no", "such", "dir.sqlite")),
             "does not exist"),
            (("accounts", not_db), "line 1"),
        ]
        for args, said in cases:
            done = run_admin(*args)
            self.assertEqual(done.returncode, 1, args)
            self.assertIn(said, done.stderr, args)
            self.assertTrue(done.stderr.startswith("twisted-chat-admin: "), done.stderr)
            self.assertNotIn("Traceback", done.stderr)

    def test_a_locked_database(self):
        prefill(self.db, 3)
        # Another program holds the database exclusively (locking_mode
        # EXCLUSIVE and a write): nobody else may even read it.
        holder = sqlite3.connect(self.db, isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("PRAGMA locking_mode = EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("DELETE FROM messages WHERE id = 1")
        for args in (("rooms", self.db), ("backup", self.db,
                                         os.path.join(self.dir, "copy.sqlite"))):
            done = run_admin(*args, "--timeout", "0.2")
            self.assertEqual(done.returncode, 1, args)
            self.assertIn("the database is locked by another program", done.stderr)
            self.assertNotIn("Traceback", done.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "copy.sqlite")))
        self.assertEqual([f for f in os.listdir(self.dir) if ".partial" in f], [])
        holder.execute("ROLLBACK")
        holder.close()
        self.assertEqual(run_admin("rooms", self.db).returncode, 0)


class DatabaseLockTests(SynchronousTestCase):
    """A running server holds its database: a second one is refused (and so,
    later, are twisted-chat-admin's offline changes)."""

    def test_a_second_server_on_the_same_database_is_refused(self):
        directory = tempfile.mkdtemp(prefix="chat-admin-")
        self.addCleanup(shutil.rmtree, directory, True)
        first = ChatServer(directory=directory).start()
        self.addCleanup(first.stop)
        done = subprocess.run(
            twistd_command() + ["-n", "--pidfile=", "chat", "--port", "tcp:0:interface=127.0.0.1"],
            cwd=directory, capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertIn("cannot use --db chat.sqlite: another twisted-chat server, or "
                      "twisted-chat-admin, is using it", done.stdout + done.stderr)
        self.assertNotIn("Traceback", done.stdout + done.stderr)
        # The first one is unharmed, and once it has stopped the lock is free.
        client = first.client()
        self.addCleanup(client.close)
        client.json_mode("alice")
        client.send("still here")
        client.expect_event("message", text="still here")
        first.stop()
        fd = lock.acquire(os.path.join(directory, "chat.sqlite"))
        lock.release(fd)


class RoomStateTests(SynchronousTestCase):
    """``topic`` and ``ops``: a room's lasting state changed while no server
    runs, saved as the server's store saves it and read back by it; refused
    while a server holds the database."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="chat-admin-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.db = os.path.join(self.dir, "chat.sqlite")
        prefill(self.db, 4)

    def loaded(self):
        """The rooms as the server's store loads them at start."""
        store = SQLiteHistory(self.db, runner=lambda fn, *args: maybeDeferred(fn, *args))
        store.startService()
        try:
            return self.successResultOf(store.load_rooms())
        finally:
            self.successResultOf(store.stopService())

    def test_topic_and_operators(self):
        before = time.time()
        done = run_admin("topic", self.db, "dev", "Release on Friday")
        after = time.time()
        self.assertEqual((done.returncode, done.stdout),
                         (0, "topic of Dev: Release on Friday\n"), done.stderr)
        done = run_admin("ops", self.db, "DEV", "--add", "Alice", "--add", "bob")
        self.assertEqual(done.stdout, "operators of Dev: alice, bob\n", done.stderr)
        done = run_admin("ops", self.db, "dev", "--remove", "bob")
        self.assertEqual(done.stdout, "operators of Dev: alice\n", done.stderr)
        self.assertEqual(run_admin("ops", self.db, "dev").stdout, "operators of Dev: alice\n")
        record = self.loaded()["dev"]
        self.assertEqual((record.name, record.topic, record.topic_by, record.ops),
                         ("Dev", "Release on Friday", "twisted-chat-admin", ("alice",)))
        self.assertTrue(before <= record.topic_t <= after, (before, record.topic_t, after))
        listing = run_admin("rooms", self.db).stdout.splitlines()
        self.assertEqual(listing[1].split()[-4:], ["alice", "Release", "on", "Friday"])
        # A room nobody has spoken in yet can be prepared too.
        run_admin("topic", self.db, "support", "Ask here", "--by", "carol")
        self.assertEqual(self.loaded()["support"].topic_by, "carol")
        # Back to the default: the rows go.
        run_admin("topic", self.db, "dev", "-")
        done = run_admin("ops", self.db, "dev", "--remove", "alice")
        self.assertEqual(done.stdout, "operators of Dev: (none)\n")
        self.assertEqual(sorted(self.loaded()), ["support"])

    def test_refused_while_a_server_runs(self):
        server = ChatServer(directory=self.dir).start()
        self.addCleanup(server.stop)
        for args in (("topic", self.db, "dev", "hello"),
                     ("ops", self.db, "dev", "--add", "alice")):
            done = run_admin(*args)
            self.assertEqual(done.returncode, 1, args)
            self.assertIn(f"a twisted-chat server is running on {self.db}", done.stderr)
            self.assertNotIn("Traceback", done.stderr)
        # Reading is fine meanwhile, and nothing was changed.
        self.assertEqual(run_admin("ops", self.db, "dev").stdout, "operators of Dev: (none)\n")
        server.stop()
        self.assertEqual(run_admin("topic", self.db, "dev", "hello").returncode, 0)
        # The server starts again on it (the lock is free once the change is
        # done) and a joiner is told the topic set offline.
        again = ChatServer(directory=self.dir).start()
        self.addCleanup(again.stop)
        client = again.client()
        self.addCleanup(client.close)
        client.json_mode("zed")
        client.send("/join dev")
        topic = client.expect_event("topic", topic="hello")
        self.assertEqual(topic["by"], "twisted-chat-admin")
        again.stop()
        self.assertEqual(self.loaded()["dev"].topic, "hello")

    def test_bad_names(self):
        for args, said in ((("ops", self.db, "dev", "--add", "no spaces"), "bad account name"),
                           (("topic", self.db, "a room", "x"), "bad ROOM"),
                           (("topic", self.db, "dev", "two\nlines"), "control characters"),
                           (("ops", self.db, "dev", "--add", "a", "--remove", "A"),
                            "both added and removed")):
            done = run_admin(*args)
            self.assertEqual(done.returncode, 1, args)
            self.assertIn(said, done.stderr, args)
            self.assertNotIn("Traceback", done.stderr)
        self.assertEqual(self.loaded(), {})
