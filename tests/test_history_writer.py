"""The history writer: its pipe protocol, and the real writer process on a
real SQLite file (the server's own use of it is in test_history_server)."""

import io
import marshal
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat.history import HistoryError, private_message, room_message, schema, writer
from twisted_chat.history.sqlite import _WriterProcess


def frames(data: bytes):
    """Decode a stream of writer frames."""
    out = []
    while data:
        size = writer.HEADER.unpack_from(data)[0]
        out.append(marshal.loads(data[writer.HEADER.size:writer.HEADER.size + size]))
        data = data[writer.HEADER.size + size:]
    return out


class WriterTestCase(SynchronousTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="chat-writer-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "chat.sqlite")

    def rows(self):
        conn = sqlite3.connect(self.path)
        try:
            return conn.execute("SELECT id, kind, room, nick, target, text, action"
                                " FROM messages ORDER BY id").fetchall()
        finally:
            conn.close()


class ServeTests(WriterTestCase):
    def test_requests_answered_in_order_errors_reported_and_survived(self):
        conn = schema.connect(self.path)
        self.addCleanup(conn.close)
        requests = io.BytesIO(
            writer.encode(("write", [room_message("lobby", "Lobby", "alice", "hi", 1.0)]))
            + writer.encode(("write", [room_message("lobby", "Lobby", "bob", "x", 2.0, True),
                                       private_message("bob", "alice", "psst", 3.0)]))
            + writer.encode(("write", [("message", "lobby")]))  # a malformed row
            + writer.encode(("prune", 2.5, 100))
            + writer.encode(("write", [room_message("dev", "dev", "carol", "later", 9.0)])))
        replies = io.BytesIO()
        writer.serve(conn, requests, replies)
        answers = frames(replies.getvalue())
        self.assertEqual(answers[:2], [(True, 1), (True, 2)])
        self.assertFalse(answers[2][0])
        self.assertIn("ProgrammingError", answers[2][1])  # says what went wrong
        self.assertEqual(answers[3], (True, 2))  # the two messages before t=2.5
        self.assertEqual(answers[4], (True, 4))  # ids go on past the failed batch
        self.assertEqual(self.rows(), [(3, "private", None, "bob", "alice", "psst", 0),
                                       (4, "message", "dev", "carol", None, "later", 0)])

    def test_a_batch_larger_than_a_chunk_is_one_transaction(self):
        conn = schema.connect(self.path)
        self.addCleanup(conn.close)
        rows = [room_message("lobby", "lobby", "a", f"m{i}", float(i))
                for i in range(writer.CHUNK * 2 + 3)]
        rows[-1] = ("message", "lobby")  # the last row is bad: nothing of the batch stays
        with self.assertRaises(sqlite3.Error):
            writer.write_batch(conn, rows)
        self.assertEqual(self.rows(), [])
        self.assertEqual(writer.write_batch(conn, rows[:-1]), 1)
        self.assertEqual([r[5] for r in self.rows()], [f"m{i}" for i in range(len(rows) - 1)])


class ProcessTests(WriterTestCase):
    def spawn(self, path=None):
        proc = subprocess.Popen([sys.executable, "-m", "twisted_chat.history.writer",
                                 path or self.path], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(self.reap, proc)
        return proc

    def reap(self, proc):
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()

    def ask(self, proc, *message):
        proc.stdin.write(writer.encode(message))
        proc.stdin.flush()
        size = writer.HEADER.unpack(proc.stdout.read(writer.HEADER.size))[0]
        return marshal.loads(proc.stdout.read(size))

    def test_writes_commits_and_exits_when_its_input_closes(self):
        proc = self.spawn()
        batch = [room_message("lobby", "lobby", "alice", f"m{i}", 1.0) for i in range(250)]
        self.assertEqual(self.ask(proc, "write", batch), (True, 1))
        # Acknowledged means committed: another connection sees it now.
        self.assertEqual(len(self.rows()), 250)
        # Signals a terminal or service manager sends the process group do
        # not stop it: the server still needs it to write what is pending.
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        self.assertEqual(self.ask(proc, "write", batch[:1]), (True, 251))
        proc.stdin.close()
        self.assertEqual(proc.wait(10), 0)

    def test_an_unusable_database_is_reported_on_stderr(self):
        bad = os.path.join(self.dir, "junk.sqlite")
        with open(bad, "wb") as f:
            f.write(b"this is not a database" * 100)
        proc = self.spawn(bad)
        proc.stdin.close()
        self.assertEqual(proc.wait(10), 1)
        err = proc.stderr.read().decode()
        self.assertIn("cannot open", err)
        self.assertIn("corrupt or not an SQLite database", err)
        self.assertNotIn("Traceback", err)


class ServerSideTests(SynchronousTestCase):
    """The server's end of the pipe, over a StringTransport: framing, replies
    split across reads, a value that cannot be sent, and the writer's death."""

    def setUp(self):
        self.proc = _WriterProcess("chat.sqlite", Clock())
        self.proc.running = True  # as if spawned
        self.proc.transport = StringTransport()

    def test_requests_framed_replies_matched_in_order(self):
        first = self.proc.request("write", [room_message("lobby", "lobby", "a", "hi", 1.0)])
        second = self.proc.request("prune", 5.0, 100)
        self.assertEqual(frames(self.proc.transport.value()),
                         [("write", [room_message("lobby", "lobby", "a", "hi", 1.0)]),
                          ("prune", 5.0, 100)])
        replies = writer.encode((True, 41)) + writer.encode((False, "OperationalError: disk"))
        self.proc.outReceived(replies[:3])  # a reply split across reads
        self.assertNoResult(first)
        self.proc.outReceived(replies[3:])
        self.assertEqual(self.successResultOf(first), 41)
        self.assertIn("disk", str(self.failureResultOf(second, HistoryError).value))

    def test_an_unsendable_value_fails_its_request_only(self):
        bad = self.proc.request("write", [("message", object())])
        self.failureResultOf(bad, HistoryError)
        self.assertEqual(self.proc.transport.value(), b"")
        good = self.proc.request("write", [])
        self.proc.outReceived(writer.encode((True, 1)))
        self.assertEqual(self.successResultOf(good), 1)

    def test_an_unsendable_value_fails_in_its_turn(self):
        # Requests sent before it are answered first: callers hear of their
        # requests in the order they made them.
        heard = []
        first = self.proc.request("write", [])
        bad = self.proc.request("room", ("dev", object()))
        last = self.proc.request("write", [])
        for name, d in (("first", first), ("bad", bad), ("last", last)):
            d.addBoth(lambda result, name=name: heard.append(name))
        self.assertEqual([f[0] for f in frames(self.proc.transport.value())],
                         ["write", "write"])  # the bad one never went
        self.proc.outReceived(writer.encode((True, 1)))
        self.assertEqual(heard, ["first", "bad"])
        self.proc.outReceived(writer.encode((True, 1)))
        self.assertEqual(heard, ["first", "bad", "last"])

    def test_the_writers_death_fails_what_it_had(self):
        pending = self.proc.request("write", [])
        self.proc.errReceived(b"cannot open chat.sqlite: it is corrupt\n")
        self.proc.processEnded(Failure(ProcessTerminated(exitCode=1)))
        reason = str(self.failureResultOf(pending, HistoryError).value)
        self.assertIn("corrupt", reason)
        self.assertFalse(self.proc.running)
        # Within a second of its start no new writer is started: refused at once.
        self.proc._spawned_at = self.proc.reactor.seconds()
        self.failureResultOf(self.proc.request("write", []), HistoryError)
