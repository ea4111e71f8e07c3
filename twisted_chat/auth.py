"""Accounts through twisted.cred: the realm, the scrypt file checker, login rate limits.

The protocol calls :class:`Accounts` (``login`` answers a Deferred with the
account's name, ``reserved`` tells whether a nick belongs to an account); the
hub only ever hears "this member is now NAME". Checkers come from ``--auth``
(Twisted's strcred), so ``memory:``, ``file:`` and this package's
``chat-passwd:`` (twisted/plugins/twisted_chat_auth.py) all work.

Passwords stay in this module and the checkers: nothing here logs one or puts
one in an error.
"""

import math
import os
from typing import Callable, Dict, Iterable, Optional, Set, Tuple

from twisted.cred import error as cred_error
from twisted.cred.checkers import (
    FilePasswordDB,
    ICredentialsChecker,
    InMemoryUsernamePasswordDatabaseDontUse,
)
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from . import passwords
from .commands import fold, valid_nick
from .errors import ChatError

log = Logger()

LOGIN_FAILED = "login failed: wrong name or password"
# Failed logins allowed per peer address: a burst, refilled evenly over the interval.
FAILURE_BURST = 5
FAILURE_INTERVAL = 60.0
MAX_IN_FLIGHT = 20  # login checks under way at once from one address


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class IChatAccount(Interface):
    """The avatar of a logged-in chat user."""

    name = Attribute("The account's name: the nick the connection takes.")


@implementer(IChatAccount)
class Account:
    def __init__(self, name: str):
        self.name = name


@implementer(IRealm)
class ChatRealm:
    def requestAvatar(self, avatarId, mind, *interfaces):
        if IChatAccount not in interfaces:
            raise NotImplementedError("twisted-chat only offers IChatAccount")
        return IChatAccount, Account(_text(avatarId)), lambda: None


@implementer(ICredentialsChecker)
class ScryptPasswordFile:
    """Checks names and passwords against a file of salted scrypt hashes.

    The file is re-read when it changes, so ``twisted-chat-passwd`` takes
    effect without a restart. Each check runs in a thread (``run``, by default
    ``deferToThread``): scrypt is slow on purpose and must not stall the reactor.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, path: str, run: Optional[Callable] = None):
        if not path:
            raise ValueError("chat-passwd needs a file name: --auth chat-passwd:FILE")
        self.path = path
        self._run = run or threads.deferToThread
        self._stamp = None
        self._accounts: Dict[str, Tuple[str, str]] = {}
        try:
            self._stamp = self._current_stamp()
            self._accounts = passwords.read_accounts(path)
        except OSError as e:
            raise ValueError(f"cannot read {path}: {e.strerror}") from None

    def _current_stamp(self):
        st = os.stat(self.path)
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _refresh(self) -> None:
        try:
            stamp = self._current_stamp()
            if stamp != self._stamp:
                self._accounts = passwords.read_accounts(self.path)
                self._stamp = stamp
        except (OSError, ValueError) as e:
            # Keep serving the accounts last read rather than locking everybody out.
            log.error("password file {path} not reloaded: {error}", path=self.path, error=str(e))

    def names(self) -> Set[str]:
        """The folded names of every account."""
        self._refresh()
        return set(self._accounts)

    def requestAvatarId(self, credentials):
        self._refresh()
        try:
            name, password = _text(credentials.username), _text(credentials.password)
        except UnicodeDecodeError:
            return defer.fail(cred_error.UnauthorizedLogin())
        entry = self._accounts.get(fold(name))
        encoded = entry[1] if entry is not None else passwords.DUMMY_HASH

        def checked(ok):
            if ok and entry is not None:
                return entry[0]
            raise cred_error.UnauthorizedLogin()

        return self._run(passwords.verify_password, password, encoded).addCallback(checked)


@implementer(ICredentialsChecker)
class FirstMatch:
    """Several ``--auth`` checkers as one: the first that accepts wins."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, checkers: Iterable):
        self.checkers = list(checkers)

    @defer.inlineCallbacks
    def requestAvatarId(self, credentials):
        for checker in self.checkers:
            try:
                avatar = yield checker.requestAvatarId(_credentials_for(checker, credentials))
            except cred_error.UnauthorizedLogin:
                continue
            return avatar
        raise cred_error.UnauthorizedLogin()


def _credentials_for(checker, credentials):
    # Twisted's memory: plugin stores its names and passwords as str while the
    # checker documents bytes; hand it str credentials so it can match.
    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse) and any(
        isinstance(key, str) for key in checker.users
    ):
        return UsernamePassword(_text(credentials.username), _text(credentials.password))
    return credentials


def account_names(checker) -> Set[str]:
    """Folded names known to ``checker``, for the checkers that can list them."""
    if isinstance(checker, ScryptPasswordFile):
        return checker.names()
    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
        return {fold(_text(name)) for name in checker.users}
    if isinstance(checker, FilePasswordDB):
        try:
            # No public listing; _loadCredentials is the documented format's reader.
            return {fold(_text(name)) for name, _ in checker._loadCredentials()}
        except (cred_error.UnauthorizedLogin, UnicodeDecodeError):
            return set()
    return set()


class FailureLimiter:
    """Failed logins per peer address: a token bucket that only failures drain.

    A failure costs a token and may leave the bucket in debt, so however many
    attempts run at once, the long-run rate stays at ``burst`` per
    ``interval``. A new attempt needs a whole token and fewer than
    ``max_in_flight`` attempts from its address under way. Successes cost
    nothing: many people behind one NAT address logging in at once (say,
    every client reconnecting after a server restart) are not refused.
    """

    def __init__(self, clock, burst: int = FAILURE_BURST, interval: float = FAILURE_INTERVAL,
                 max_in_flight: int = MAX_IN_FLIGHT):
        self.clock = clock
        self.burst = burst
        self.rate = burst / interval  # tokens per second
        self.max_in_flight = max_in_flight
        self._buckets: Dict[str, Tuple[float, float]] = {}  # host -> (tokens, when)
        self._in_flight: Dict[str, int] = {}

    def _tokens(self, host: str) -> float:
        tokens, when = self._buckets.get(host, (self.burst, 0.0))
        return min(self.burst, tokens + (self.clock.seconds() - when) * self.rate)

    def begin(self, host: str) -> Optional[str]:
        """None if an attempt from ``host`` may start (call ``end`` after it),
        else why not, for the user."""
        tokens = self._tokens(host)
        if tokens < 1:
            wait = math.ceil((1 - tokens) / self.rate)
            return f"too many failed logins from your address; try again in {wait} s"
        if self._in_flight.get(host, 0) >= self.max_in_flight:
            return "too many logins under way from your address; try again in a moment"
        self._in_flight[host] = self._in_flight.get(host, 0) + 1
        return None

    def end(self, host: str, failed: bool) -> None:
        left = self._in_flight.pop(host, 1) - 1
        if left:
            self._in_flight[host] = left
        if failed:
            self._buckets[host] = (self._tokens(host) - 1, self.clock.seconds())
        if len(self._buckets) > 10000:
            self._prune()

    def _prune(self) -> None:
        for host in [h for h in self._buckets if self._tokens(h) >= self.burst]:
            del self._buckets[host]


class Accounts:
    """What the protocol needs of accounts: log a name in, tell reserved names."""

    def __init__(self, checkers: Iterable, clock, limiter: Optional[FailureLimiter] = None):
        self.checkers = list(checkers)
        self.portal = Portal(ChatRealm(), [FirstMatch(self.checkers)])
        self.limiter = limiter or FailureLimiter(clock)
        # Checkers that cannot list their names still reserve every name that
        # has logged in since the server started.
        self._seen: Set[str] = set()

    def reserved(self, key: str) -> bool:
        """Whether the folded nick ``key`` belongs to an account."""
        if key in self._seen:
            return True
        return any(key in account_names(checker) for checker in self.checkers)

    def login(self, host: str, name: str, password: str) -> defer.Deferred:
        """A Deferred firing with the account's nick, or failing with ChatError(login-failed)."""
        name = valid_nick(name)
        refusal = self.limiter.begin(host)
        if refusal is not None:
            log.warn("login as {name} from {host} refused: {why}", name=name, host=host,
                     why=refusal.split(" from your address")[0])
            return defer.fail(ChatError("login-failed", refusal))
        credentials = UsernamePassword(name.encode("utf-8"), password.encode("utf-8"))
        d = self.portal.login(credentials, None, IChatAccount)
        del credentials

        def succeeded(result):
            _, account, _ = result
            self.limiter.end(host, failed=False)
            try:
                nick = valid_nick(account.name)
            except ChatError:
                nick = name  # an odd name in a foreign checker: use what was typed
            self._seen.add(fold(nick))
            return nick

        def failed(failure):
            self.limiter.end(host, failed=True)
            if not failure.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials):
                # Not the user's fault; the type and text only (no locals, no password).
                log.error("login check for {name} failed: {error}", name=name,
                          error=f"{failure.type.__name__}: {failure.getErrorMessage()}")
            log.warn("failed login as {name} from {host}", name=name, host=host)
            raise ChatError("login-failed", LOGIN_FAILED)

        return d.addCallbacks(succeeded, failed)
