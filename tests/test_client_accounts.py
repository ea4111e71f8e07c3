"""The desktop client's TLS and login: units without a display, then the real window
over real TLS to a real ``twistd chat --auth ... --guests no``."""

import os
import shutil
import tempfile
from datetime import timezone

from OpenSSL import SSL
from service_identity.exceptions import VerificationError
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat import passwords
from twisted_chat.client import app
from twisted_chat.client import model as m
from twisted_chat.client import tls
from twisted_chat.client.protocol import ChatClientFactory
from twisted_chat.client.session import ChatSession

from .certs import self_signed
from .support import ChatServer
from .window_support import WindowClient, display

CHEAP = dict(ln=4, r=8, p=1)


class TLSOptionTests(SynchronousTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="chat-client-tls-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

    def test_parse_ssl(self):
        self.assertEqual(tls.parse_ssl("ssl:chat.lan:5443"), ("chat.lan", 5443))
        self.assertEqual(tls.parse_ssl("ssl:host=chat.lan:port=5443"), ("chat.lan", 5443))
        for bad in ("ssl:", "ssl:chat.lan", "ssl:chat.lan:x", "ssl:chat.lan:0",
                    "ssl:chat.lan:5443:caCertsDir=/etc", "tcp:chat.lan:5443"):
            self.assertRaises(ValueError, tls.parse_ssl, bad)

    def test_trust_roots_from_a_pem_file(self):
        _, one = self_signed(self.dir, stem="one")
        _, two = self_signed(self.dir, stem="two")
        bundle = os.path.join(self.dir, "bundle.pem")
        with open(bundle, "wb") as out:
            for path in (one, two):
                with open(path, "rb") as f:
                    out.write(f.read())
        self.assertIsNotNone(tls.load_trust_root(bundle))
        e = self.assertRaises(ValueError, tls.load_trust_root, os.path.join(self.dir, "none"))
        self.assertIn("cannot read", str(e))
        with open(bundle, "w") as f:
            f.write("not a certificate\n")
        self.assertIn("no PEM certificate", str(self.assertRaises(ValueError,
                                                                  tls.load_trust_root, bundle)))

    def endpoint(self, *argv):
        args = app.parser().parse_args(list(argv))
        return app.client_endpoint(MemoryReactorClock(), args)

    def test_endpoints_from_options(self):
        _, cert = self_signed(self.dir)
        for argv in (("--connect", "ssl:localhost:5443", "--ca", cert),
                     ("--tls", "--host", "localhost", "--port", "5443")):
            endpoint = self.endpoint(*argv)
            # A TLS wrapper around a HostnameEndpoint for that host and port.
            self.assertIsInstance(endpoint._wrapperFactory(Factory()), TLSMemoryBIOFactory)
            self.assertEqual(repr(endpoint._wrappedEndpoint), "<HostnameEndpoint localhost:5443>")
        # Plain TCP from --host/--port: every address of the name is tried.
        self.assertEqual(repr(self.endpoint("--host", "chat.example.org", "--port", "5000")),
                         "<HostnameEndpoint chat.example.org:5000>")
        self.assertIsInstance(self.endpoint("--connect", "tcp:chat.example.org:5000"),
                              TCP4ClientEndpoint)  # --connect: as written
        self.assertRaises(ValueError, self.endpoint, "--ca", cert)  # --ca without TLS
        self.assertRaises(ValueError, self.endpoint, "--tls", "--connect", "tcp:h:1")
        self.assertRaises(ValueError, self.endpoint, "--connect", "ssl:localhost:5443",
                          "--ca", os.path.join(self.dir, "missing.pem"))

    def test_password_file(self):
        path = os.path.join(self.dir, "pw")
        with open(path, "w") as f:
            f.write("two words\nignored\n")
        self.assertEqual(app.read_password(path), "two words")
        with open(path, "w") as f:
            f.write("\n")
        self.assertRaises(ValueError, app.read_password, path)

    def test_tls_failures_in_words(self):
        untrusted = tls.describe_failure(Failure(SSL.Error(
            [("SSL routines", "", "certificate verify failed")])))
        self.assertIn("not trusted", untrusted)
        self.assertIn("--ca", untrusted)
        wrong_name = tls.describe_failure(Failure(VerificationError(errors=[])))
        self.assertIn("not for this host name", wrong_name)
        self.assertIsNone(tls.describe_failure(Failure(ConnectionLost())))


class SessionLoginTests(SynchronousTestCase):
    def setUp(self):
        self.model = m.ConversationModel(nick="someone", tz=timezone.utc)
        self.session = ChatSession(self.model)
        self.factory = ChatClientFactory(self.session)

    def open(self):
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def sent(self, transport):
        lines = transport.value().decode("utf-8").split("\n")[:-1]
        transport.clear()
        return lines

    def test_login_with_known_password_then_room(self):
        self.session.use_login("alice", "pass phrase")
        self.model.room = "dev"
        proto, transport = self.open()
        self.assertEqual(self.sent(transport), ["/mode json", "/login alice pass phrase"])
        proto.dataReceived(b'{"type":"welcome","nick":"guest1"}\n'
                           b'{"type":"nick","old":"guest1","new":"alice","ts":"t"}\n')
        self.assertEqual(self.model.login_state, m.LOGGED_IN)
        self.assertEqual(self.sent(transport), [])  # the login puts us in a room first
        proto.dataReceived(b'{"type":"join","room":"lobby","nick":"alice","ts":"t"}\n')
        # --room dev: dev joined, the default room left.
        self.assertEqual(self.sent(transport), ["/join dev", "/part lobby"])
        # A reconnect logs in again with the password kept in memory.
        proto.connectionLost(Failure(ConnectionLost()))
        proto2, transport2 = self.open()
        self.assertEqual(self.sent(transport2), ["/mode json", "/login alice pass phrase"])

    def test_password_asked_then_wrong_then_right(self):
        self.session.use_login("alice")
        proto, transport = self.open()
        self.assertEqual(self.sent(transport), ["/mode json"])  # no /nick alice: reserved
        self.assertEqual(self.model.login_state, m.LOGIN_NEEDED)
        self.session.login("wrong")
        self.assertEqual(self.sent(transport), ["/login alice wrong"])
        proto.dataReceived(b'{"type":"error","code":"login-failed",'
                           b'"message":"login failed: wrong name or password"}\n')
        self.assertEqual(self.model.login_state, m.LOGIN_FAILED)
        self.assertIn("login-failed", self.model.lines[-1].text)
        # Not retried by itself, not even after a reconnect.
        proto.connectionLost(Failure(ConnectionLost()))
        proto, transport = self.open()
        self.assertEqual(self.sent(transport), ["/mode json"])
        self.assertEqual(self.model.login_state, m.LOGIN_NEEDED)
        self.session.login("right")
        self.assertEqual(self.sent(transport), ["/login alice right"])

    def test_typed_login_is_never_shown(self):
        self.session.submit("/login bob sekrit words")  # not connected: nothing queued
        self.assertEqual(self.session.outbox, [])
        proto, transport = self.open()
        self.assertEqual(self.sent(transport), ["/mode json", "/login bob sekrit words"])
        self.assertFalse([line for line in self.model.lines if "sekrit" in line.render()])


class TLSServerWindowCase(SynchronousTestCase):
    """The real window, TLS to a real server with accounts and no guests."""

    accounts = {"alice": "alice pass phrase", "bob": "bob-pw"}
    certificate_name = "localhost"

    def setUp(self):
        self.display = display(self)
        self.dir = tempfile.mkdtemp(prefix="chat-client-accounts-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        path = os.path.join(self.dir, "accounts")
        for name, password in self.accounts.items():
            passwords.set_account(path, name, passwords.hash_password(password, **CHEAP))
        self.key, self.cert = self_signed(self.dir, self.certificate_name)
        self.server = ChatServer(
            "--port", "ssl:0:interface=127.0.0.1:privateKey=server.key:certKey=server.pem",
            "--auth", "chat-passwd:accounts", directory=self.dir).start()
        self.addCleanup(self.server.stop)
        self.tls_port = self.server.listener("ssl:")

    def window(self, *args):
        w = WindowClient(self.display, "--connect", f"ssl:localhost:{self.tls_port}", *args)
        self.addCleanup(w.close)
        return w



class WindowLoginTests(TLSServerWindowCase):
    def test_password_field_over_tls(self):
        w = self.window("--ca", self.cert, "--login", "alice")
        state = w.wait_for(lambda s: s["login_bar"] == "Password for alice:", "the login bar")
        w.call("password", text="not my password")
        state = w.wait_for(lambda s: s["login_bar"] == "Password for alice (again):",
                           "the login bar again after a wrong password")
        self.assertTrue(any("login-failed" in line for line in state["lines"]))
        w.call("password", text=self.accounts["alice"])
        state = w.wait_for(lambda s: s["status"] == "Connected as alice in lobby",
                           "alice logged in")
        self.assertIsNone(state["login_bar"])
        self.assertEqual(state["password_field"], "")
        bob = self.server.client()
        self.addCleanup(bob.close)
        bob.json_mode()
        bob.send(f"/login bob {self.accounts['bob']}")
        bob.expect_event("names")
        w.wait_for(lambda s: "bob" in s["members"], "bob in the member list")
        w.say("hello over TLS")
        self.assertEqual(bob.expect_event("message", nick="alice")["text"], "hello over TLS")
        state = w.dump()
        for secret in ("not my password", self.accounts["alice"]):
            self.assertFalse([line for line in state["lines"] if secret in line])
        w.call("close")
        self.assertEqual(w.wait_exit(), 0, w.errors())
        self.assertNotIn("Traceback", w.errors())
        bob.close()
        self.server.stop()
        for secret in ("not my password", *self.accounts.values()):
            self.assertNotIn(secret, self.server.logtext())
            self.assertNotIn(secret, w.errors())

    def test_password_file(self):
        pw = os.path.join(self.dir, "alice.pw")
        with open(pw, "w") as f:
            f.write(self.accounts["alice"] + "\n")
        w = self.window("--ca", self.cert, "--login", "alice", "--password-file", pw,
                        "--room", "dev")
        state = w.wait_for(lambda s: s["status"] == "Connected as alice in dev",
                           "alice logged in and in dev")
        self.assertIsNone(state["login_bar"])

    def test_logged_in_again_after_a_restart_then_every_room_joined(self):
        pw = os.path.join(self.dir, "alice.pw")
        with open(pw, "w") as f:
            f.write(self.accounts["alice"] + "\n")
        w = self.window("--ca", self.cert, "--login", "alice", "--password-file", pw)
        w.wait_for(lambda s: s["status"] == "Connected as alice in lobby", "alice logged in")
        for room in ("dev", "ops"):
            w.say(f"/join {room}")
            w.wait_for(lambda s: s["room"] == f"#{room}", f"alice in {room}")
        w.say("/join dev")  # a room she is in: shown again
        w.wait_for(lambda s: s["room"] == "#dev", "dev shown")
        w.say("/part lobby")
        w.wait_for(lambda s: s["conversations"] == ["#dev", "#ops"], "lobby left")

        self.server.stop()
        w.wait_for(lambda s: "reconnecting in" in s["status"], "reconnecting")
        # The same port and accounts, no guests: nothing may be joined before the login.
        self.server = ChatServer(
            "--port", f"ssl:{self.tls_port}:interface=127.0.0.1:privateKey=server.key:"
            "certKey=server.pem", "--auth", "chat-passwd:accounts", directory=self.dir).start()
        self.addCleanup(self.server.stop)
        state = w.wait_for(lambda s: s["status"] == "Connected as alice in dev"
                           and s["conversations"] == ["#dev", "#ops"]
                           and s["members"] == ["@alice"], "alice back in dev and ops",
                           timeout=40)
        self.assertEqual(state["selected"], ["#dev"])
        # Nothing was refused on the way: no /join before the login, no text before the join.
        self.assertFalse([line for line in state["lines"]
                          if "login-required" in line or "not-in-room" in line], state["lines"])
        w.call("close")
        self.assertEqual(w.wait_exit(), 0, w.errors())

    def test_untrusted_certificate_is_shown_not_a_traceback(self):
        other = os.path.join(self.dir, "other")
        os.mkdir(other)
        _, wrong_ca = self_signed(other, "localhost")
        pw = os.path.join(self.dir, "alice.pw")
        with open(pw, "w") as f:
            f.write(self.accounts["alice"] + "\n")
        w = self.window("--ca", wrong_ca, "--login", "alice", "--password-file", pw)
        state = w.wait_for(lambda s: any("certificate is not trusted" in line
                                         for line in s["lines"]), "the TLS problem in the log")
        self.assertIn("reconnecting", w.wait_for(
            lambda s: "certificate is not trusted" in s["status"], "the status bar")["status"])
        self.assertNotIn("Traceback", w.errors())
        self.assertNotIn(" as alice", self.server.logtext())  # the password never left


class WindowHostnameTests(TLSServerWindowCase):
    """The server's certificate is valid and trusted, but for another name."""

    certificate_name = "chat.example"

    def test_name_mismatch_is_shown(self):
        w = self.window("--ca", self.cert, "--login", "alice")
        w.wait_for(lambda s: any("not for this host name" in line for line in s["lines"]),
                   "the host name problem in the log")
        self.assertNotIn("Traceback", w.errors())
