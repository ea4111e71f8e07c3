"""``twisted-chat-client``: options, the Tk root on Twisted's reactor, and a clean exit.

Tk and Twisted share one loop through ``twisted.internet.tksupport`` (the
reactor calls ``root.update`` every 10 ms); no thread touches Tk. Closing the
window and Ctrl+C take the same path: the reactor stops, the 'before
shutdown' trigger says ``/quit`` and stops the ClientService, and after
``reactor.run()`` returns, ``tksupport.uninstall()`` comes before
``root.destroy()``.
"""

import argparse
import getpass
import sys

from twisted.internet.endpoints import HostnameEndpoint, clientFromString, quoteStringArgument
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

from ..commands import valid_nick, valid_room
from ..errors import ChatError
from .model import ConversationModel
from .session import ChatSession, connect

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000  # the server's default (tap.DEFAULT_PORT)
log = Logger()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="twisted-chat-client",
        description="The twisted-chat desktop client: a chat window on Tk.",
    )
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"server host name or address (default {DEFAULT_HOST}); a name with "
                        "several addresses: each is tried until one accepts")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"server TCP port (default {DEFAULT_PORT})")
    p.add_argument("--connect", metavar="ENDPOINT",
                   help="client endpoint string instead of --host/--port, "
                        "e.g. tcp:chat.example.org:5000 or unix:/run/chat.sock")
    p.add_argument("--nick", help="nick to ask for (default: your login name, if it is a "
                                  "valid nick; otherwise the server's guest nick)")
    p.add_argument("--room", help="room to join (default: the server's default room)")
    p.add_argument("--tls", action="store_true",
                   help="speak TLS to --host/--port, verifying the server's certificate and "
                        "host name (--connect ssl:HOST:PORT does the same)")
    p.add_argument("--ca", metavar="FILE",
                   help="PEM file of the certificate(s) to trust for TLS: a private CA or "
                        "the server's self-signed certificate (default: the system's CAs)")
    p.add_argument("--login", metavar="NAME",
                   help="log in to the account NAME; the window asks for the password "
                        "(a field, no dialog) unless --password-file gives it")
    p.add_argument("--password-file", metavar="FILE",
                   help="read the --login password from the first line of FILE")
    p.add_argument("--verbose", action="store_true", help="log connection events to stderr")
    return p


def endpoint_description(args) -> str:
    """The client endpoint string for the options: --connect, or tcp from --host/--port."""
    if args.connect:
        return args.connect
    return f"tcp:host={quoteStringArgument(args.host)}:port={args.port}"


def default_nick():
    try:
        return valid_nick(getpass.getuser())
    except (ChatError, Exception):
        return None


def _check(args, p):
    try:
        if args.nick is not None:
            args.nick = valid_nick(args.nick)
        if args.room is not None:
            args.room = valid_room(args.room)
    except ChatError as e:
        p.error(e.message)
    if not args.connect and not (0 < args.port < 65536):
        p.error("--port must be 1-65535")
    if args.login is not None:
        try:
            args.login = valid_nick(args.login)
        except ChatError as e:
            p.error(f"--login: {e.message}")
    if args.password_file and args.login is None:
        p.error("--password-file needs --login NAME")


def client_endpoint(reactor, args):
    """The endpoint for the options; ValueError with a readable message if bad."""
    from . import tls

    description = endpoint_description(args)
    if args.connect and args.connect.split(":", 1)[0].lower() == "ssl":
        host, port = tls.parse_ssl(args.connect)
        return tls.tls_endpoint(reactor, host, port, args.ca)
    if args.tls:
        if args.connect:
            raise ValueError("--tls goes with --host/--port; for --connect write ssl:HOST:PORT")
        return tls.tls_endpoint(reactor, args.host, args.port, args.ca)
    if args.ca:
        raise ValueError("--ca needs --tls or --connect ssl:HOST:PORT")
    if args.connect:
        return clientFromString(reactor, description)
    # Every address the name has (IPv6 and IPv4, several servers behind one
    # name in DNS), tried in turn a moment apart: the first that accepts
    # wins, so a dead server's address is passed over (``tcp:`` would try
    # one address only).
    return HostnameEndpoint(reactor, args.host.encode("idna"), args.port)


def read_password(path: str) -> str:
    """The first line of ``path``, without its line end."""
    with open(path, encoding="utf-8") as f:
        line = f.readline()
    password = line.rstrip("\r\n")
    if not password:
        raise ValueError(f"{path} holds no password on its first line")
    return password


class ClientApp:
    """The running client: a model, a session, a ClientService and the window."""

    def __init__(self, reactor, root, endpoint, nick=None, room=None, login=None,
                 password=None):
        from .tkview import ChatView

        self.reactor = reactor
        self.root = root
        self.model = ConversationModel(nick=nick)
        if room:
            self.model.add_room(room)  # joined on connect, and shown
        self.session = ChatSession(self.model, on_quit=self.quit)
        if login is not None:
            self.session.use_login(login, password)
        self.view = ChatView(root, self.model, self.session.submit, login=self.session.login)
        self.service = connect(endpoint, self.session, clock=reactor)
        self._stopping = None
        self._reason = None
        root.protocol("WM_DELETE_WINDOW", self.quit)
        root.title(self.model.title())
        reactor.addSystemEventTrigger("before", "shutdown", self._shutdown)

    def quit(self, reason: str = "") -> None:
        """The window was closed (or /quit typed): stop the reactor."""
        if self._reason is None:
            self._reason = reason or "closed the window"
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass  # already on its way out (a second click on the close button)

    def _shutdown(self):
        # Every way out comes here: the close button, /quit, Ctrl+C, SIGTERM.
        if self._stopping is None:
            self.session.quit(self._reason or "client stopped")
            self._stopping = self.service.stopService()
            self._stopping.addBoth(lambda _: self.session.stopped())
        return self._stopping

    def run(self) -> int:
        import tkinter

        from twisted.internet import tksupport

        self.service.startService()
        tksupport.install(self.root)
        try:
            self.reactor.run()
        finally:
            tksupport.uninstall()  # before destroy(): no more update() calls
            try:
                self.view.close()
                self.root.destroy()
            except tkinter.TclError:
                pass  # the window is gone already
        return 0


def make_root():
    """The Tk root, or a clear error when there is no display."""
    import tkinter

    root = tkinter.Tk(className="twisted-chat")
    root.geometry("860x540")
    return root


def build(argv=None, reactor=None):
    """Parse ``argv`` and build the app (window included), not yet running."""
    p = parser()
    args = p.parse_args(argv)
    _check(args, p)
    if reactor is None:
        from twisted.internet import reactor
    try:
        endpoint = client_endpoint(reactor, args)
    except Exception as e:  # the parsers raise many types; all mean "bad"
        p.error(f"bad --connect {args.connect!r}: {e}" if args.connect else str(e))
    password = None
    if args.password_file:
        try:
            password = read_password(args.password_file)
        except (OSError, ValueError) as e:
            p.error(f"--password-file: {getattr(e, 'strerror', None) or e}")
    if args.verbose:
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    nick = args.nick if args.nick is not None else default_nick()
    return ClientApp(reactor, make_root(), endpoint, nick=nick, room=args.room,
                     login=args.login, password=password)


def main(argv=None) -> int:
    import tkinter

    try:
        app = build(argv)
    except tkinter.TclError as e:
        print(f"twisted-chat-client: cannot open a window: {e}", file=sys.stderr)
        return 1
    return app.run()
