"""Accounts without sockets: the hub's rules, the checkers, the limiter, the options,
and the protocol driven over a StringTransport with a fake clock."""

import json
import os
import shutil
import tempfile

from twisted.cred import error as cred_error
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat import passwords
from twisted_chat.auth import Accounts, FailureLimiter, FirstMatch, ScryptPasswordFile
from twisted_chat.errors import ChatError
from twisted_chat.hub import Hub
from twisted_chat.protocol import ChatFactory
from twisted_chat.tap import Options

CHEAP = dict(ln=4, r=8, p=1)


def now(f, *args):
    """A ``run`` for the checker that hashes at once instead of in a thread."""
    return defer.maybeDeferred(f, *args)


def memory_checker(**users):
    # As Twisted's memory: plugin builds it (str names and passwords).
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    for name, password in users.items():
        checker.addUser(name, password)
    return checker


def result_of(d):
    box = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


class Collector:
    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)

    def types(self):
        return [e.type for e in self.events]


class HubAccountTests(SynchronousTestCase):
    def setUp(self):
        self.hub = Hub(reserved=lambda key: key in {"alice", "bob"})
        self.outs = {}  # first nick -> the events that member received

    def member(self, nick=None):
        out = Collector()
        m = self.hub.connect(out)
        self.outs[m.nick] = out
        if nick:
            self.hub.set_nick(m, nick)
        return m

    def test_guest_cannot_take_reserved_nick(self):
        m = self.member()
        e = self.assertRaises(ChatError, self.hub.set_nick, m, "ALICE")
        self.assertEqual(e.code, "nick-reserved")
        self.assertNotIn("alice", [x.nick for x in self.hub.members.values()])
        self.hub.set_nick(m, "carol")  # unreserved names are fine

    def test_login_takes_nick_and_renames_guest_holder(self):
        squatter = self.member()
        squatter_out = self.outs[squatter.nick]
        self.hub.reserved = lambda key: False  # the account appears after the squat
        self.hub.set_nick(squatter, "alice")
        self.hub.reserved = lambda key: key in {"alice"}
        owner = self.member()
        owner_out = self.outs[owner.nick]
        self.hub.set_nick(owner, "dave")
        self.hub.login(owner, "alice")
        self.assertEqual(owner.nick, "alice")
        self.assertRegex(squatter.nick, r"^guest\d+$")
        self.assertIs(self.hub.members["alice"], owner)
        renames = [(e.fields["old"], e.fields["new"]) for e in owner_out.events if e.type == "nick"]
        self.assertEqual(renames[-2:], [("alice", squatter.nick), ("dave", "alice")])
        told = [e for e in squatter_out.events if e.type == "info"]
        self.assertIn("alice logged in", told[-1].fields["message"])
        # The owner may come back to its name after a /nick elsewhere; the guest may not.
        self.hub.set_nick(owner, "dave")
        e = self.assertRaises(ChatError, self.hub.set_nick, squatter, "alice")
        self.assertEqual(e.code, "nick-reserved")
        self.hub.set_nick(owner, "Alice")
        self.assertEqual(owner.nick, "Alice")

    def test_without_guests_nothing_registers_before_login(self):
        self.hub.guests = False
        m = self.member()
        self.hub.register(m)  # what the protocol's grace timer calls
        self.assertEqual((m.registered, m.rooms), (False, {}))
        e = self.assertRaises(ChatError, self.hub.check_guest, m)
        self.assertEqual(e.code, "login-required")
        for call in (lambda: self.hub.say(m, "hi"), lambda: self.hub.join(m, "dev"),
                     lambda: self.hub.private(m, "bob", "hi")):
            self.assertEqual(self.assertRaises(ChatError, call).code, "login-required")
        self.assertEqual(m.rooms, {})
        self.hub.login(m, "bob")
        self.assertEqual([r.name for r in m.rooms], ["lobby"])
        self.hub.check_guest(m)


class ScryptCheckerTests(SynchronousTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="chat-auth-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.path = os.path.join(self.dir, "accounts")
        passwords.set_account(self.path, "Alice", passwords.hash_password("s3cret pw", **CHEAP))
        self.hashed = []

        def run(f, password, encoded):
            self.hashed.append(encoded)
            return now(f, password, encoded)

        self.checker = ScryptPasswordFile(self.path, run=run)

    def check(self, name, password):
        return result_of(self.checker.requestAvatarId(UsernamePassword(name, password)))

    def test_success_gives_the_stored_name(self):
        self.assertEqual(self.check(b"alice", b"s3cret pw"), "Alice")

    def test_wrong_password_and_unknown_user(self):
        self.check(b"alice", b"wrong").trap(cred_error.UnauthorizedLogin)
        self.check(b"mallory", b"s3cret pw").trap(cred_error.UnauthorizedLogin)
        # An unknown name still costs a full hash, so timing does not tell.
        self.assertEqual(self.hashed[-1], passwords.DUMMY_HASH)

    def test_file_changes_are_picked_up(self):
        self.assertEqual(self.checker.names(), {"alice"})
        passwords.set_account(self.path, "bob", passwords.hash_password("pw-b", **CHEAP))
        self.assertEqual(self.checker.names(), {"alice", "bob"})
        self.assertEqual(self.check(b"bob", b"pw-b"), "bob")
        # A broken edit keeps the accounts last read.
        with open(self.path, "a") as f:
            f.write("garbage line\n")
        self.assertEqual(self.checker.names(), {"alice", "bob"})

    def test_missing_file_is_a_clear_error(self):
        e = self.assertRaises(ValueError, ScryptPasswordFile, os.path.join(self.dir, "nope"))
        self.assertIn("cannot read", str(e))


class LimiterTests(SynchronousTestCase):
    def fail_once(self, limiter, host):
        self.assertIsNone(limiter.begin(host))
        limiter.end(host, failed=True)

    def test_burst_then_refill(self):
        clock = MemoryReactorClock()
        limiter = FailureLimiter(clock, burst=3, interval=30.0)
        for _ in range(3):
            self.fail_once(limiter, "10.0.0.1")
        self.assertEqual(limiter.begin("10.0.0.1"),
                         "too many failed logins from your address; try again in 10 s")
        self.assertIsNone(limiter.begin("10.0.0.2"))  # per address
        clock.advance(10)
        self.fail_once(limiter, "10.0.0.1")
        self.assertIsNotNone(limiter.begin("10.0.0.1"))

    def test_successes_cost_nothing(self):
        limiter = FailureLimiter(MemoryReactorClock(), burst=2, interval=60.0)
        for _ in range(10):
            self.assertIsNone(limiter.begin("nat"))
        for _ in range(10):
            limiter.end("nat", failed=False)
        self.fail_once(limiter, "nat")
        self.fail_once(limiter, "nat")
        self.assertIsNotNone(limiter.begin("nat"))

    def test_parallel_failures_go_into_debt(self):
        # Guesses started together all count: the address then waits them off.
        clock = MemoryReactorClock()
        limiter = FailureLimiter(clock, burst=2, interval=60.0, max_in_flight=4)
        for _ in range(4):
            self.assertIsNone(limiter.begin("h"))
        self.assertEqual(limiter.begin("h"),
                         "too many logins under way from your address; try again in a moment")
        for _ in range(4):
            limiter.end("h", failed=True)
        self.assertEqual(limiter.begin("h"),
                         "too many failed logins from your address; try again in 90 s")
        clock.advance(89)
        self.assertIsNotNone(limiter.begin("h"))
        clock.advance(1)
        self.assertIsNone(limiter.begin("h"))


class AccountsTests(SynchronousTestCase):
    def setUp(self):
        self.clock = MemoryReactorClock()
        self.accounts = Accounts([memory_checker(alice="pw-a")], self.clock,
                                 FailureLimiter(self.clock, burst=2, interval=60.0))

    def test_login_and_reserved(self):
        self.assertTrue(self.accounts.reserved("alice"))
        self.assertFalse(self.accounts.reserved("bob"))
        self.assertEqual(result_of(self.accounts.login("h", "alice", "pw-a")), "alice")

    def test_failures_are_generic_then_limited(self):
        for name, password in (("alice", "nope"), ("nobody", "pw-a")):
            e = result_of(self.accounts.login("h", name, password)).value
            self.assertEqual((e.code, e.message), ("login-failed", "login failed: wrong name or password"))
        e = result_of(self.accounts.login("h", "alice", "pw-a")).value
        self.assertEqual(e.code, "login-failed")
        self.assertIn("too many failed logins", e.message)
        self.assertEqual(result_of(self.accounts.login("other", "alice", "pw-a")), "alice")
        self.clock.advance(30)
        self.assertEqual(result_of(self.accounts.login("h", "alice", "pw-a")), "alice")

    def test_invalid_name_is_refused_before_any_check(self):
        e = self.assertRaises(ChatError, self.accounts.login, "h", "no:pe", "x")
        self.assertEqual(e.code, "nick-invalid")

    def test_several_checkers(self):
        checker = FirstMatch([memory_checker(alice="one"), memory_checker(bob="two")])
        self.assertEqual(result_of(checker.requestAvatarId(UsernamePassword(b"bob", b"two"))), "bob")
        result_of(checker.requestAvatarId(UsernamePassword(b"bob", b"one"))).trap(
            cred_error.UnauthorizedLogin)


class OptionsTests(SynchronousTestCase):
    def parse(self, *args):
        options = Options()
        options.parseOptions(["--port", "tcp:0:interface=127.0.0.1", *args])
        return options

    def test_guests_default_follows_auth(self):
        self.assertTrue(self.parse()["guests"])
        self.assertFalse(self.parse("--auth", "memory:alice:pw")["guests"])
        self.assertTrue(self.parse("--auth", "memory:alice:pw", "--guests", "yes")["guests"])

    def test_bad_combinations(self):
        self.assertRaises(usage.UsageError, self.parse, "--guests", "no")
        self.assertRaises(usage.UsageError, self.parse, "--auth", "memory:a:b", "--guests", "maybe")
        e = self.assertRaises(usage.UsageError, self.parse, "--auth", "chat-passwd:/nonexistent/x")
        self.assertIn("cannot read", str(e))
        self.assertRaises(usage.UsageError, self.parse, "--auth", "nosuchkind:x")
        self.assertRaises(usage.UsageError, self.parse, "--port",
                          "ssl:0:privateKey=/nonexistent.key:certKey=/nonexistent.pem")

    def test_twisted_file_checker(self):
        d = tempfile.mkdtemp(prefix="chat-auth-")
        self.addCleanup(shutil.rmtree, d, ignore_errors=True)
        path = os.path.join(d, "plain")
        with open(path, "w") as f:
            f.write("alice:pw-a\nbob:pw-b\n")
        options = self.parse("--auth", f"file:{path}")
        self.assertFalse(options["guests"])
        accounts = Accounts(options["credCheckers"], MemoryReactorClock())
        self.assertTrue(accounts.reserved("bob"))
        self.assertFalse(accounts.reserved("carol"))
        self.assertEqual(result_of(accounts.login("h", "bob", "pw-b")), "bob")
        self.assertEqual(result_of(accounts.login("h", "bob", "pw-a")).value.code, "login-failed")

    def test_chat_passwd_plugin(self):
        d = tempfile.mkdtemp(prefix="chat-auth-")
        self.addCleanup(shutil.rmtree, d, ignore_errors=True)
        path = os.path.join(d, "accounts")
        passwords.set_account(path, "alice", passwords.hash_password("pw", **CHEAP))
        options = self.parse("--auth", f"chat-passwd:{path}")
        [checker] = options["credCheckers"]
        self.assertIsInstance(checker, ScryptPasswordFile)
        self.assertEqual(checker.names(), {"alice"})


class ProtocolLoginTests(SynchronousTestCase):
    """The protocol with a checker whose answers the test controls."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.pending = []

        class Checker:
            credentialInterfaces = FirstMatch.credentialInterfaces

            def requestAvatarId(checker, credentials):
                d = defer.Deferred()
                self.pending.append((credentials, d))
                return d

        self.accounts = Accounts([Checker()], self.clock)
        self.hub = Hub(guests=False, reserved=self.accounts.reserved)
        self.factory = ChatFactory(self.hub, clock=self.clock, accounts=self.accounts)

    def connect(self, host="127.0.0.1"):
        proto = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=_Addr(host))
        proto.makeConnection(transport)
        proto.lineReceived(b"/mode json")
        self.clock.advance(0)
        transport.clear()
        return proto, transport

    def events(self, transport):
        self.clock.advance(0)
        out = [json.loads(line) for line in transport.value().splitlines() if line]
        transport.clear()
        return out

    def test_guest_is_never_auto_registered(self):
        proto, transport = self.connect()
        self.clock.advance(10)  # well past the registration grace
        self.assertEqual(proto.member.rooms, {})
        self.assertEqual(self.hub.rooms["lobby"].members, {})
        proto.lineReceived(b"hello?")
        [ev] = self.events(transport)
        self.assertEqual((ev["type"], ev["code"]), ("error", "login-required"))

    def test_login_in_flight_blocks_nobody(self):
        proto, transport = self.connect()
        proto.lineReceived(b"/login alice some pass phrase")
        [(credentials, d)] = self.pending
        self.assertEqual(credentials.password, b"some pass phrase")
        # The same connection and another one are served meanwhile.
        proto.lineReceived(b"/ping one")
        proto.lineReceived(b"/login alice again")
        evs = self.events(transport)
        self.assertEqual(evs[0], {"type": "pong", "token": "one"})
        self.assertEqual((evs[1]["code"], evs[1]["message"]),
                         ("login-failed", "a login is already in progress"))
        other, other_t = self.connect()
        other.lineReceived(b"/ping two")
        self.assertEqual(self.events(other_t), [{"type": "pong", "token": "two"}])
        d.callback(b"alice")
        evs = self.events(transport)
        self.assertEqual([e["type"] for e in evs], ["nick", "join", "names"])
        self.assertEqual(proto.member.nick, "alice")
        self.assertTrue(self.accounts.reserved("alice"))
        for ev in evs:
            self.assertNotIn("pass phrase", json.dumps(ev))

    def test_failed_login_answer_and_connection_gone(self):
        proto, transport = self.connect()
        proto.lineReceived(b"/login alice bad")
        self.pending.pop()[1].errback(cred_error.UnauthorizedLogin())
        [ev] = self.events(transport)
        self.assertEqual(ev, {"type": "error", "code": "login-failed",
                              "message": "login failed: wrong name or password"})
        proto.lineReceived(b"/login alice late")
        proto.connectionLost(_Reason())
        self.pending.pop()[1].callback(b"alice")  # answered after the hang-up: ignored
        self.assertNotIn("alice", self.hub.members)


class NoAccountsTests(SynchronousTestCase):
    def test_login_without_auth(self):
        clock = MemoryReactorClock()
        factory = ChatFactory(Hub(), clock=clock)
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=_Addr("127.0.0.1"))
        proto.makeConnection(transport)
        proto.lineReceived(b"/login alice pw")
        clock.advance(0)
        self.assertIn(b"!! login-failed: this server has no accounts", transport.value())
        self.assertNotIn(b"pw", transport.value().split(b"login-failed")[1])


class _Addr:
    def __init__(self, host):
        self.host, self.port, self.type = host, 4242, "TCP"


class _Reason:
    def getErrorMessage(self):
        return "gone"
