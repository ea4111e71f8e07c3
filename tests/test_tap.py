"""``twistd chat``: option validation, the service tree, and plugin discovery."""

import os
import socket
import subprocess
import sys
import tempfile

from twisted.application.service import IServiceMaker
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat.history import RoomRecord
from twisted_chat.tap import Options, endpoint_description, makeService

from .support import ChatServer, LineClient, twistd_command


class OptionsTests(SynchronousTestCase):
    def parse(self, *args):
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_defaults(self):
        options = self.parse()
        self.assertEqual(options["ports"], ["tcp:5000"])
        self.assertEqual(options["default-room"], "lobby")
        self.assertEqual(options["max-line"], 4096)

    def test_bare_port_number_means_tcp(self):
        self.assertEqual(endpoint_description("6000"), "tcp:6000")
        self.assertEqual(self.parse("--port", "6000", "-p", "unix:/tmp/x.sock")["ports"],
                         ["tcp:6000", "unix:/tmp/x.sock"])

    def test_bad_options_are_usage_errors(self):
        for args in (["--port", "nonsense:1"], ["--port", "tcp:notaport"],
                     ["--default-room", "bad room!"], ["--max-line", "3"],
                     ["--max-line", "many"]):
            self.assertRaises(UsageError, self.parse, *args)

    def test_service_has_one_listener_per_port(self):
        options = self.parse("-p", "tcp:0:interface=127.0.0.1", "-p", "tcp:0:interface=127.0.0.1")
        service = makeService(options)
        self.assertEqual(len(list(service)), 2)


class PluginTests(SynchronousTestCase):
    def test_chat_plugin_is_discoverable(self):
        names = [maker.tapname for maker in getPlugins(IServiceMaker)]
        self.assertIn("chat", names)

    def test_twistd_help_lists_chat_and_its_options(self):
        env = dict(os.environ)
        cwd = tempfile.mkdtemp()  # not the checkout: only the installed plugin counts
        self.addCleanup(os.rmdir, cwd)
        out = subprocess.run(twistd_command() + ["--help"], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=60).stdout
        self.assertRegex(out, r"\n\s+chat\s+A real-time chat server")
        out = subprocess.run(twistd_command() + ["chat", "--help"], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=60).stdout
        for option in ("--port", "--motd", "--default-room", "--max-line"):
            self.assertIn(option, out)

    def test_bad_option_exits_with_a_message_not_a_traceback(self):
        cwd = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, cwd)
        result = subprocess.run(twistd_command() + ["-n", "--pidfile=", "chat", "--port", "bogus:1"],
                                cwd=cwd, capture_output=True, text=True, timeout=60)
        self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr
        self.assertIn("bad --port 'bogus:1'", output)
        self.assertNotIn("Traceback", output)


class ListenerTests(SynchronousTestCase):
    def test_tcp_and_unix_listeners_share_one_chat(self):
        path = os.path.join(tempfile.mkdtemp(), "chat.sock")
        self.addCleanup(os.rmdir, os.path.dirname(path))
        server = ChatServer("--port", f"unix:{path}").start()
        self.addCleanup(server.stop)
        server.wait_for_log("chat listening on unix:")
        tcp = LineClient(server.port)
        self.addCleanup(tcp.close)
        tcp.json_mode("alice")
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        sock.sendall(b"/nick bob\nhi over unix\n")
        self.addCleanup(sock.close)
        self.assertEqual(tcp.expect_event("message")["text"], "hi over unix")


class _Port:
    def getHost(self):
        return IPv4Address("TCP", "127.0.0.1", 5000)

    def stopListening(self):
        return None


class _Endpoint:
    """A listening endpoint that notes, as it starts listening, the rooms'
    lasting state its first clients would find in the hub."""

    def __init__(self):
        self.hub = None
        self.found = []  # the hub's saved rooms at each listen()

    def listen(self, factory):
        self.found.append(dict(self.hub.saved))
        return succeed(_Port())


class StartTests(SynchronousTestCase):
    """The listeners start once the rooms' lasting state (topics, flags,
    bans, operators) is read from the store: a client served before that
    would join rooms without it (and might be made operator of a room whose
    bans were not there yet)."""

    def start(self):
        options = Options()
        options.parseOptions(["--db", ":memory:"])
        endpoint = _Endpoint()
        options["endpoints"] = [endpoint]
        top = makeService(options)
        endpoint.hub = top.turn.hub
        reading = Deferred()  # the store's read of the rooms, held back here
        top.store.load_rooms = lambda: reading
        top.startService()
        return top, endpoint, reading

    def test_the_listeners_start_once_the_rooms_are_read(self):
        top, endpoint, reading = self.start()
        self.addCleanup(lambda: top.running and top.stopService())
        self.assertEqual(endpoint.found, [])  # not listening while the store reads
        dev = RoomRecord("dev", "Dev", topic="Release on Friday", bans=(("eve", "eve", "op", 1.0),))
        reading.callback({"dev": dev})
        self.assertEqual(endpoint.found, [{"dev": dev}])
        self.successResultOf(top.stopService())
        self.assertFalse(top.running)

    def test_stopped_before_the_rooms_are_read(self):
        top, endpoint, reading = self.start()
        self.successResultOf(top.stopService())
        reading.callback({})
        self.assertEqual(endpoint.found, [])  # it never listened
        self.assertIsNone(top.store._conn)  # the store is closed
