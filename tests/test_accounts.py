"""Accounts end to end: a real ``twistd chat --auth ...`` and clients over loopback."""

import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from twisted_chat import passwords

from .certs import self_signed
from .support import ChatServer, LineClient

CHEAP = dict(ln=4, r=8, p=1)
GENERIC = "login failed: wrong name or password"


class AccountServerTestCase(SynchronousTestCase):
    """A server with ``--auth chat-passwd:accounts`` (alice, bob) in its own directory."""

    extra_args = ("--guests", "yes")
    accounts = {"alice": "alice's pass phrase", "bob": "hunter2-bob"}

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="chat-accounts-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.path = os.path.join(self.dir, "accounts")
        for name, password in self.accounts.items():
            passwords.set_account(self.path, name, passwords.hash_password(password, **CHEAP))
        self.server = ChatServer(*self.server_args(), directory=self.dir).start()
        self.addCleanup(self.server.stop)

    def server_args(self):
        """``twistd chat`` options; ``self.dir`` holds the accounts file by now."""
        return ("--auth", "chat-passwd:accounts", *self.extra_args)

    def client(self, nick=None):
        c = self.server.client()
        self.addCleanup(c.close)
        c.json_mode(nick)
        return c

    def login(self, c, name, password):
        c.send(f"/login {name} {password}")


class GuestsAllowedTests(AccountServerTestCase):
    def test_login_takes_the_account_nick(self):
        watcher = self.client("watcher")
        alice = self.client()
        self.login(alice, "ALICE", self.accounts["alice"])
        ev = alice.expect_event("nick", new="alice")
        self.assertRegex(ev["old"], r"^guest\d+$")
        alice.expect_event("names", room="lobby")
        watcher.expect_event("join", nick="alice")  # first seen as alice, never as the guest
        alice.send("hello as myself")
        self.assertEqual(watcher.expect_event("message", nick="alice")["text"], "hello as myself")

    def test_wrong_password_and_unknown_user_look_the_same(self):
        c = self.client("carol")
        self.login(c, "alice", "not it")
        wrong = c.expect_event("error")
        self.login(c, "mallory", "whatever")
        unknown = c.expect_event("error")
        self.assertEqual(wrong, {"type": "error", "code": "login-failed", "message": GENERIC})
        self.assertEqual(unknown, wrong)
        c.send("/ping after")
        c.expect_event("pong", token="after")
        self.assertEqual(c.seen.count(c.seen[-1]), 1)  # still carol, still connected

    def test_guest_cannot_take_a_reserved_nick(self):
        c = self.client()
        for name in ("alice", "Bob", "\uff21lice"):  # full-width A folds to alice
            c.send(f"/nick {name}")
            self.assertEqual(c.expect_event("error")["code"], "nick-reserved")
        c.send("/nick carol")
        c.expect_event("nick", new="carol")

    def test_guest_holding_the_name_is_renamed_when_the_owner_logs_in(self):
        squatter = self.client("dave")  # dave has no account yet
        # The operator adds dave while the server runs (the real command).
        self.run_passwd("dave", "daves-secret")
        owner = self.client()
        self.login(owner, "dave", "daves-secret")
        renamed = squatter.expect_event("nick", old="dave")
        self.assertRegex(renamed["new"], r"^guest\d+$")
        self.assertIn("dave logged in", squatter.expect_event("info")["message"])
        owner.expect_event("nick", new="dave")
        squatter.expect_event("join", nick="dave")  # it sees the owner arrive under the name
        owner.send("/quit")
        squatter.expect_event("quit", nick="dave")
        squatter.send("/nick dave")  # the owner is gone, the name stays reserved
        self.assertEqual(squatter.expect_event("error")["code"], "nick-reserved")

    def run_passwd(self, name, password):
        script = os.path.join(os.path.dirname(sys.executable), "twisted-chat-passwd")
        done = subprocess.run([script, self.path, name], input=password + "\n",
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)

    def test_failed_logins_are_rate_limited_and_passwords_never_logged(self):
        c = self.client("eve")
        for i in range(5):
            self.login(c, "alice", f"guess-number-{i}")
            self.assertEqual(c.expect_event("error")["message"], GENERIC)
        self.login(c, "alice", self.accounts["alice"])  # right, but too late
        limited = c.expect_event("error")
        self.assertEqual(limited["code"], "login-failed")
        self.assertRegex(limited["message"], r"^too many failed logins from your address; "
                                             r"try again in \d+ s$")
        # Another connection from the same address is limited too.
        other = self.client()
        self.login(other, "bob", self.accounts["bob"])
        self.assertIn("too many", other.expect_event("error")["message"])
        c.send("/ping done")
        c.expect_event("pong", token="done")
        self.server.wait_for_log("login as bob from 127.0.0.1 refused: too many failed logins$")
        self.server.stop()
        log = self.server.logtext()
        self.assertEqual(log.count("failed login as alice from 127.0.0.1"), 5)
        for secret in ["guess-number", *self.accounts.values()]:
            self.assertNotIn(secret, log)
        self.assertNotIn("Traceback", log)


class GuestsRefusedTests(AccountServerTestCase):
    extra_args = ()  # --auth alone: no guests

    def test_only_login_help_and_quit_before_login(self):
        watcher = self.server.client()
        self.addCleanup(watcher.close)
        connected = time.monotonic()
        watcher.expect_text("this server has no guests: /login NAME PASSWORD")
        watcher.send("/mode json")
        watcher.expect_event("welcome")
        for line in ("hello?", "/nick zed", "/join elsewhere", "/who", "/rooms", "/msg bob hi",
                     "/me waves"):
            watcher.send(line)
            self.assertEqual(watcher.expect_event("error")["code"], "login-required", line)
        watcher.send("/help")
        watcher.expect_event("info", message="/login NAME PASSWORD")
        bob = self.client()
        self.login(bob, "bob", self.accounts["bob"])
        bob.expect_event("nick", new="bob")
        # Well past the ~3 s registration grace, the silent guest is still nowhere.
        time.sleep(max(0.0, 3.5 - (time.monotonic() - connected)))
        bob.send("/who")
        self.assertEqual(bob.expect_event("names")["nicks"], ["bob"])
        bob.send("hello, anybody?")
        self.assertEqual([line for line in watcher.quiet(0.3) if "hello" in line], [])
        watcher.send("/quit")
        watcher.expect_event("bye")
        self.assertTrue(watcher.closed())

    def test_logged_in_users_chat(self):
        alice, bob = self.client(), self.client()
        self.login(alice, "alice", self.accounts["alice"])
        alice.expect_event("names")
        self.login(bob, "bob", self.accounts["bob"])
        alice.expect_event("join", nick="bob")
        bob.send("/msg alice psst")
        self.assertEqual(alice.expect_event("private")["from"], "bob")


class MemoryCheckerTests(SynchronousTestCase):
    """Twisted's own ``--auth memory:`` checker works as in other twistd plugins."""

    def test_memory_auth(self):
        server = ChatServer("--auth", "memory:alice:pw-one:bob:pw-two").start()
        self.addCleanup(server.stop)
        c = server.client()
        self.addCleanup(c.close)
        c.json_mode()
        c.send("/nick bob")
        self.assertEqual(c.expect_event("error")["code"], "login-required")
        c.send("/login bob pw-one")
        self.assertEqual(c.expect_event("error")["code"], "login-failed")
        c.send("/login bob pw-two")
        c.expect_event("nick", new="bob")
        c.expect_event("names", room="lobby")


class TLSLoginTests(AccountServerTestCase):
    """The issue's goal: TLS, accounts from the hashed file, no guests."""

    extra_args = ("--guests", "no")

    def server_args(self):
        self.key, self.cert = self_signed(self.dir, "localhost")
        return ("--port", "ssl:0:interface=127.0.0.1:privateKey=server.key:certKey=server.pem",
                *super().server_args())

    def test_login_over_tls_and_no_secret_in_the_log(self):
        context = ssl.create_default_context(cafile=self.cert)
        alice = LineClient(self.server.listener("ssl:"), tls=context, server_hostname="localhost")
        self.addCleanup(alice.close)
        alice.json_mode()
        self.login(alice, "alice", self.accounts["alice"])
        alice.expect_event("nick", new="alice")
        alice.expect_event("names", room="lobby", nicks=["alice"])
        bob = self.client()  # the plain listener beside it
        self.login(bob, "bob", self.accounts["bob"])
        alice.expect_event("join", nick="bob")
        alice.send("/msg bob over TLS")
        self.assertEqual(bob.expect_event("private")["text"], "over TLS")
        self.server.wait_for_log(r"login 127\.0\.0\.1:\d+ guest\d+ as bob")
        self.server.stop()
        log = self.server.logtext()
        self.assertIn("as alice", log)
        for secret in self.accounts.values():
            self.assertNotIn(secret, log)
