"""The bare baseline: a LineReceiver that broadcasts every line to everybody else.

No nicks, parsing, rendering or limits: one ``sendLine`` (one Python call and
one ``transport.write``) per delivery, which is what a plain Twisted chat
server pays. For the several-rooms scenario it knows rooms and nothing more:
``/join ROOM`` adds the connection to ROOM (answered ``-- in ROOM:``), and
``/say ROOM TEXT`` sends TEXT to ROOM's other members. The benchmark measures it with the same parameters, in the
same run, as the server under test and reports ratios to it.

    python -m twisted_chat.bench.baseline --port 0   # prints "listening on PORT"
"""

import argparse
import resource
import sys

from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver


class BareBroadcast(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 4097

    def connectionMade(self):
        self.factory.clients[self] = None

    def connectionLost(self, reason):
        self.factory.clients.pop(self, None)
        for room in self.factory.rooms.values():
            room.pop(self, None)

    def lineReceived(self, line):
        # The line keeps its CR, if any; sendLine adds the LF back.
        if line[:1] == b"/":
            return self.command(line)
        for client in self.factory.clients:
            if client is not self:
                client.sendLine(line)

    def command(self, line):
        verb, _, rest = line.partition(b" ")
        if verb == b"/say":
            name, _, text = rest.partition(b" ")
            for client in self.factory.rooms.get(name, ()):
                if client is not self:
                    client.sendLine(text)
        elif verb == b"/join":
            name = rest.rstrip(b"\r")
            self.factory.rooms.setdefault(name, {})[self] = None
            self.sendLine(b"-- in " + name + b":\r")


class BareFactory(Factory):
    protocol = BareBroadcast

    def __init__(self):
        self.clients = {}
        self.rooms = {}  # name -> {client: None}


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--interface", default="127.0.0.1")
    args = parser.parse_args(argv)
    raise_fd_limit()
    port = reactor.listenTCP(args.port, BareFactory(), backlog=4096, interface=args.interface)
    sys.stdout.write(f"listening on {port.getHost().port}\n")
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()
