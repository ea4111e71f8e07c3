"""Rooms' lasting state in the SQLite history store (IRoomStore), on real files:
through a runner the test drives by hand, through a real writer process
whose replies the test pumps, and through a real reactor in a child process;
and the schema upgrade of a version 1 database that holds messages."""

import ast
import marshal
import os
import sqlite3
import subprocess
import sys
import textwrap

from twisted.internet.error import ProcessDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from twisted_chat.history import (HistoryError, IRoomStore, RoomRecord, default_room,
                                  is_default, schema, writer)
from twisted_chat.history import sqlite as store_module
from twisted_chat.history.sqlite import _WriterProcess

from .test_history_store import StoreTestCase, message

FULL = RoomRecord(
    key="dev", name="Dev", topic="release on friday \U0001F680", topic_by="alice",
    topic_t=1700000000.25, topic_lock=False, moderated=True, invite_only=True,
    password="s3cret", limit=12, ops=("alice", "bob"),
    bans=(("address:10.0.0.9", "troll", "alice", 1700000100.5),
          ("account:zed", "zed", "bob", 1700000050.0),  # set later, older t: order is kept
          ("account:amy", None, "alice", 1700000200.0)))


def make_v1(path, texts):
    """A database as the version 1 schema left it, holding room messages."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL").fetchone()
    conn.executescript(schema.schema_files()[1])
    conn.execute("INSERT INTO schema_version (version) VALUES (1)")
    conn.executemany(
        "INSERT INTO messages (kind, room, room_name, nick, target, text, action, t)"
        " VALUES ('message', 'lobby', 'Lobby', 'alice', NULL, ?, 0, ?)",
        [(text, float(i)) for i, text in enumerate(texts, 1)])
    conn.close()


def table_rows(path, table):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT * FROM {table}").fetchall()
    finally:
        conn.close()


class RoomsTestCase(StoreTestCase):
    def load(self, store, runner):
        return self.read(store, runner, store.load_rooms())

    def save(self, store, runner, record):
        d = store.save_room(record)
        self.clock.advance(0)
        runner.run_all()
        return d


class RoundTripTests(RoomsTestCase):
    def test_the_store_provides_the_interface(self):
        store, _ = self.open()
        self.assertTrue(verifyObject(IRoomStore, store))

    def test_every_field_survives_reopening(self):
        store, runner = self.open()
        quiet = RoomRecord("lounge", "Lounge", topic="tea")  # defaults otherwise
        self.successResultOf(self.save(store, runner, FULL))
        self.successResultOf(self.save(store, runner, quiet))
        self.close(store, runner)
        store, runner = self.open()
        rooms = self.load(store, runner)
        self.assertEqual(rooms, {"dev": FULL, "lounge": quiet})
        # Types, not just equal values: bools are bools, tuples are tuples.
        got = rooms["dev"]
        self.assertIs(got.topic_lock, False)
        self.assertIs(got.moderated, True)
        self.assertIsInstance(got.limit, int)
        self.assertIsInstance(got.bans, tuple)
        self.assertIsInstance(got.bans[0], tuple)
        self.assertEqual(rooms["lounge"].topic_lock, True)
        self.assertIsNone(rooms["lounge"].limit)

    def test_a_save_replaces_the_whole_room(self):
        store, runner = self.open()
        self.save(store, runner, FULL)
        fewer = FULL._replace(ops=("carol",), bans=FULL.bans[1:2], password=None, limit=None)
        self.successResultOf(self.save(store, runner, fewer))
        self.assertEqual(self.load(store, runner), {"dev": fewer})
        self.assertEqual(table_rows(self.path, "room_ops"), [("dev", "carol")])
        self.assertEqual(len(table_rows(self.path, "room_bans")), 1)

    def test_a_default_record_deletes_the_room(self):
        store, runner = self.open()
        self.save(store, runner, FULL)
        self.save(store, runner, FULL._replace(key="other"))
        gone = default_room("dev", "DEV")
        self.assertTrue(is_default(gone))
        self.successResultOf(self.save(store, runner, gone))
        self.assertEqual(list(self.load(store, runner)), ["other"])
        for table in ("rooms", "room_ops", "room_bans"):
            self.assertNotIn("dev", [row[0] for row in table_rows(self.path, table)])
        # Deleting a room that was never kept is fine too.
        self.successResultOf(self.save(store, runner, default_room("never", "never")))

    def test_lists_are_taken_for_tuples(self):
        store, runner = self.open()
        listed = FULL._replace(ops=list(FULL.ops), bans=[list(ban) for ban in FULL.bans])
        self.successResultOf(self.save(store, runner, listed))
        self.assertEqual(self.load(store, runner), {"dev": FULL})
        # No operators as an empty list is still the default: deleted.
        self.save(store, runner, default_room("dev", "dev")._replace(ops=[], bans=[]))
        self.assertEqual(self.load(store, runner), {})

    def test_no_rooms(self):
        store, runner = self.open()
        self.assertEqual(self.load(store, runner), {})

    def test_memory_database(self):
        store, runner = self.open(path=":memory:")
        self.save(store, runner, FULL)
        self.assertEqual(self.load(store, runner), {"dev": FULL})
        self.assertEqual(os.listdir(self.dir), [])


class OrderTests(RoomsTestCase):
    def test_saves_are_ordered_with_messages(self):
        store, runner = self.open()
        store._max_in_flight = 4  # as with the writer process: all sent at once
        events = []
        store.append(message("m1"), lambda i: events.append(("m1", i)))
        store.save_room(FULL).addCallback(lambda _: events.append("saved topic"))
        store.append(message("m2"), lambda i: events.append(("m2", i)))
        store.append(message("m3"), lambda i: events.append(("m3", i)))
        store.save_room(FULL._replace(topic="later")).addCallback(
            lambda _: events.append("saved later"))
        self.assertEqual(runner.jobs, [])  # nothing before the end of the turn
        self.clock.advance(0)
        # The turn's messages are cut into batches around each save.
        self.assertEqual([(job[0].__name__, job[1][-1]) for job in runner.jobs],
                         [("_write", [message("m1")]), ("save_room", tuple(FULL)),
                          ("_write", [message("m2"), message("m3")]),
                          ("save_room", tuple(FULL._replace(topic="later")))])
        runner.run_all()
        self.assertEqual(events, [("m1", 1), "saved topic", ("m2", 2), ("m3", 3),
                                  "saved later"])
        self.assertEqual(self.load(store, runner)["dev"].topic, "later")

    def test_one_in_flight_keeps_the_order_too(self):
        store, runner = self.open()  # a runner: one request at a time
        events = []
        store.append(message("m1"), lambda i: events.append(("m1", i)))
        store.save_room(FULL).addCallback(lambda _: events.append("saved"))
        store.append(message("m2"), lambda i: events.append(("m2", i)))
        self.clock.advance(0)
        self.assertEqual(len(runner.jobs), 1)
        runner.run_one()
        self.assertEqual(events, [("m1", 1)])
        self.assertEqual(runner.jobs[0][0], writer.save_room)  # the save goes next
        runner.run_one()
        self.assertEqual(events, [("m1", 1), "saved"])
        runner.run_all()
        self.assertEqual(events, [("m1", 1), "saved", ("m2", 2)])

    def test_a_save_alone_goes_at_the_end_of_the_turn(self):
        store, runner = self.open()
        d = store.save_room(FULL)
        self.assertEqual(runner.jobs, [])
        self.clock.advance(0)
        self.assertEqual(len(runner.jobs), 1)
        self.assertNoResult(d)  # fired once committed, not before
        runner.run_one()
        self.successResultOf(d)

    def test_a_batch_in_flight_holds_the_save_back(self):
        store, runner = self.open()
        events = []
        store.append(message("m1"), lambda i: events.append(("m1", i)))
        self.clock.advance(0)
        store.save_room(FULL).addCallback(lambda _: events.append("saved"))
        store.append(message("m2"), lambda i: events.append(("m2", i)))
        self.clock.advance(0)
        self.assertEqual(len(runner.jobs), 1)  # m1's batch only
        runner.run_all()
        self.assertEqual(events, [("m1", 1), "saved", ("m2", 2)])

    def test_stopping_writes_a_pending_save(self):
        store, runner = self.open()
        store.save_room(FULL)
        d = store.stopService()
        self.assertNoResult(d)
        runner.run_all()
        self.successResultOf(d)
        self.assertEqual([row[0] for row in table_rows(self.path, "rooms")], ["dev"])


class FailedSaveTests(RoomsTestCase):
    def check_fails_alone(self, bad):
        store, runner = self.open()
        store._max_in_flight = 4
        self.save(store, runner, FULL)
        events = []
        store.append(message("m1"), lambda i: events.append(("m1", i)),
                     lambda: events.append(("m1", "failed")))
        failing = store.save_room(bad)
        failing.addErrback(lambda f: events.append("save failed") or f)
        store.append(message("m2"), lambda i: events.append(("m2", i)),
                     lambda: events.append(("m2", "failed")))
        store.save_room(FULL._replace(topic="after")).addCallback(
            lambda _: events.append("saved after"))
        self.clock.advance(0)
        runner.run_all()
        self.assertEqual(events, [("m1", 1), "save failed", ("m2", 2), "saved after"])
        self.failureResultOf(failing)
        self.assertEqual(self.load(store, runner)["dev"], FULL._replace(topic="after"))
        self.assertEqual(self.successResultOf(store.drain()), None)

    def test_a_value_the_schema_refuses(self):
        self.check_fails_alone(FULL._replace(limit="ten"))

    def test_a_value_sqlite_cannot_take(self):
        self.check_fails_alone(FULL._replace(topic_t=object()))

    def test_a_failed_save_keeps_what_was_kept(self):
        store, runner = self.open()
        self.save(store, runner, FULL)
        # The ops and bans are written after the room's row: the failure
        # comes half-way, and the transaction takes it all back.
        bad = FULL._replace(topic="new", bans=(("account:x",),))
        self.failureResultOf(self.save(store, runner, bad))
        self.assertEqual(self.load(store, runner), {"dev": FULL})


class UpgradeTests(RoomsTestCase):
    def test_a_version_1_database_is_upgraded_and_keeps_its_messages(self):
        make_v1(self.path, ["one", "two", "three"])
        schema.check(self.path)  # the start-up check lets it through
        store, runner = self.open()
        conn = sqlite3.connect(self.path)
        self.addCleanup(conn.close)
        self.assertEqual(schema.version_of(conn), 2)
        got = self.read(store, runner, store.recent("lobby", 10))
        self.assertEqual([(m.id, m.text, m.room, m.t) for m in got],
                         [(1, "one", "Lobby", 1.0), (2, "two", "Lobby", 2.0),
                          (3, "three", "Lobby", 3.0)])
        self.assertEqual(store.last_id_at_start, 3)
        self.assertEqual(self.load(store, runner), {})
        acked = []
        store.append(message("four"), acked.append)
        self.save(store, runner, FULL)
        self.assertEqual(acked, [4])
        self.assertEqual(self.load(store, runner), {"dev": FULL})

    def test_an_interrupted_upgrade_leaves_version_1_and_its_messages(self):
        make_v1(self.path, ["kept"])
        scripts = schema.schema_files()
        self.patch(schema, "schema_files",
                   lambda: {1: scripts[1], 2: scripts[2] + "\nBOGUS STATEMENT;"})
        self.assertRaises(HistoryError, schema.connect, self.path)
        conn = sqlite3.connect(self.path)
        self.addCleanup(conn.close)
        self.assertEqual(schema.version_of(conn), 1)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        self.assertNotIn("rooms", tables)
        self.assertEqual(conn.execute("SELECT text FROM messages").fetchall(), [("kept",)])


class PipeTransport:
    """The writer process's stdin, as _WriterProcess writes to it."""

    def __init__(self, proc):
        self.proc = proc
        self.requests = []

    def write(self, data):
        self.requests.append(marshal.loads(data[writer.HEADER.size:])[0])
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def closeStdin(self):
        self.proc.stdin.close()


class WriterProcessTests(RoomsTestCase):
    """The store's writer-process path with a real writer process: the
    server's end (_WriterProcess) writes to its stdin, and the test hands
    its replies back one at a time, as the reactor would."""

    def setUp(self):
        super().setUp()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "twisted_chat.history.writer", self.path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(self.reap)
        self.end = _WriterProcess(self.path, Clock())
        self.end.running = True  # as if spawned
        self.end.transport = PipeTransport(self.proc)
        self.store, self.runner = self.open()  # the runner serves the reads
        self.store._writer = self.end
        self.store._max_in_flight = store_module.MAX_IN_FLIGHT
        self.addCleanup(self.stop)

    def stop(self):
        """Stop the store as a server does: what is pending is written, the
        writer's stdin is closed, it exits."""
        if not self.store.running:
            return
        d = self.store.stopService()
        self.clock.advance(0)
        self.pump()
        self.assertEqual(self.proc.wait(10), 0)  # closing its input ended it
        self.end.processEnded(Failure(ProcessDone(0)))
        self.runner.run_all()
        self.successResultOf(d)

    def reap(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if not stream.closed:
                stream.close()

    def pump(self):
        """Hand every outstanding reply to the server's end, one at a time."""
        while self.end._pending:
            header = self.proc.stdout.read(writer.HEADER.size)
            self.assertEqual(len(header), writer.HEADER.size,
                             self.proc.stderr.read().decode() if header == b"" else "")
            body = self.proc.stdout.read(writer.HEADER.unpack(header)[0])
            self.end.outReceived(header + body)

    def test_saves_and_messages_in_order_one_save_failing(self):
        events = []

        def note(name):
            return lambda result: events.append(name)

        store = self.store
        store.append(message("m1"), lambda i: events.append(("m1", i)))
        store.save_room(FULL).addCallback(note("saved"))
        store.append(message("m2"), lambda i: events.append(("m2", i)))
        refused = store.save_room(FULL._replace(moderated=7, topic="refused"))
        refused.addErrback(lambda f: events.append("refused") or f)
        store.append(message("m3"), lambda i: events.append(("m3", i)))
        store.save_room(default_room("gone", "gone")).addCallback(note("deleted"))
        store.append(message("m4"), lambda i: events.append(("m4", i)))
        self.clock.advance(0)
        # Four requests went before the first reply (MAX_IN_FLIGHT), in order.
        self.assertEqual(self.end.transport.requests, ["write", "room", "write", "room"])
        self.pump()
        self.assertEqual(self.end.transport.requests,
                         ["write", "room", "write", "room", "write", "room", "write"])
        self.assertEqual(events, [("m1", 1), "saved", ("m2", 2), "refused", ("m3", 3),
                                  "deleted", ("m4", 4)])
        reason = str(self.failureResultOf(refused, HistoryError).value)
        self.assertIn("CHECK constraint failed", reason)
        self.assertEqual(self.load(self.store, self.runner), {"dev": FULL})

    def test_a_save_marshal_cannot_carry_fails_alone(self):
        events = []
        self.store.append(message("m1"), lambda i: events.append(("m1", i)))
        bad = self.store.save_room(FULL._replace(topic_t=object()))
        bad.addErrback(lambda f: events.append("failed") or f)
        self.store.append(message("m2"), lambda i: events.append(("m2", i)))
        self.clock.advance(0)
        self.pump()
        self.assertEqual(events, [("m1", 1), "failed", ("m2", 2)])
        self.assertIn("cannot send it", str(self.failureResultOf(bad, HistoryError).value))
        self.assertEqual(self.end.transport.requests, ["write", "write"])

    def test_a_default_record_deletes_through_the_writer(self):
        self.store.save_room(FULL)
        self.clock.advance(0)
        self.pump()
        self.assertEqual(self.load(self.store, self.runner), {"dev": FULL})
        d = self.store.save_room(default_room("dev", "dev"))
        self.clock.advance(0)
        self.pump()
        self.successResultOf(d)
        self.assertEqual(self.load(self.store, self.runner), {})
        self.assertEqual(table_rows(self.path, "room_bans"), [])


# A real server's store, on a real reactor: the writer process spawned by
# the store itself, reads on its thread pool (for :memory:, one thread for
# both). argv: PATH, then "save", "load" or "both".
REACTOR_SCRIPT = textwrap.dedent("""
    import sys
    from twisted.internet import defer, reactor
    from twisted_chat.history import RoomRecord, room_message
    from twisted_chat.history.sqlite import SQLiteHistory

    path, mode = sys.argv[1], sys.argv[2]
    out = {}

    @defer.inlineCallbacks
    def main():
        store = SQLiteHistory(path)
        store.startService()
        try:
            out["writer process"] = store._writer is not None
            if mode in ("save", "both"):
                events = out["events"] = []
                saves = []
                for i in range(3):
                    store.append(room_message("lobby", "Lobby", "alice", "m%d" % i, 5.0),
                                 lambda n, i=i: events.append(("m%d" % i, n)))
                    saves.append(store.save_room(RoomRecord(
                        "dev", "Dev", topic="t%d" % i, ops=("alice",),
                        bans=(("address:10.0.0.%d" % i, "x", "alice", 1.0),)))
                        .addCallback(lambda _, i=i: events.append("saved t%d" % i)))
                bad = store.save_room(RoomRecord("bad", "bad", limit=-1))
                bad.addErrback(lambda f: events.append("bad failed"))
                yield defer.DeferredList(saves + [bad])
                yield store.drain()
            if mode != "save":
                rooms = yield store.load_rooms()
                out["rooms"] = {key: tuple(record) for key, record in rooms.items()}
                out["messages"] = [(m.id, m.text) for m in (yield store.recent("lobby", 9))]
        finally:
            yield store.stopService()
            reactor.stop()

    reactor.callWhenRunning(main)
    reactor.run()
    print(repr(out))
""")


class RealReactorTests(RoomsTestCase):
    def run_store(self, mode, path=None):
        done = subprocess.run([sys.executable, "-c", REACTOR_SCRIPT, path or self.path, mode],
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertNotIn("Traceback", done.stderr)
        return ast.literal_eval(done.stdout.strip().splitlines()[-1])

    def test_a_v1_database_upgraded_then_rooms_kept_across_restarts(self):
        make_v1(self.path, ["before the upgrade"])
        saved = self.run_store("save")
        self.assertTrue(saved["writer process"])
        self.assertEqual(saved["events"], [("m0", 2), "saved t0", ("m1", 3), "saved t1",
                                           ("m2", 4), "saved t2", "bad failed"])
        loaded = self.run_store("load")
        self.assertEqual(loaded["rooms"], {"dev": tuple(RoomRecord(
            "dev", "Dev", topic="t2", ops=("alice",),
            bans=(("address:10.0.0.2", "x", "alice", 1.0),)))})
        self.assertEqual(loaded["messages"], [(1, "before the upgrade"), (2, "m0"),
                                              (3, "m1"), (4, "m2")])

    def test_memory_database_in_process(self):
        got = self.run_store("both", ":memory:")
        self.assertFalse(got["writer process"])
        self.assertEqual(got["events"], [("m0", 1), "saved t0", ("m1", 2), "saved t1",
                                         ("m2", 3), "saved t2", "bad failed"])
        self.assertEqual(got["rooms"]["dev"][2], "t2")
        self.assertEqual(got["messages"], [(1, "m0"), (2, "m1"), (3, "m2")])
