"""A failover TCP front for the cluster tests: what an operator's load
balancer (HAProxy in ``mode tcp``, see docs/operations.rst) does for
clients, in a few lines.

Each new connection goes to the first backend, in the order given, that
accepts it, and its bytes are forwarded both ways untouched (Twisted's
``twisted.protocols.portforward``); when either side closes, so does the
other. A killed backend refuses connections, so a client that reconnects
through the front reaches the next one. Nothing is health-checked here:
a refused connection is the check.

Run as a process of its own (the tests run no reactor)::

    python tests/front.py 127.0.0.1:5000 127.0.0.1:5001

It listens on a free loopback port and prints ``front listening on PORT``;
:class:`Front` starts it and stops it for a test.
"""

import os
import re
import subprocess
import sys

from twisted_chat.procs import stop_process

LISTENING = re.compile(rb"front listening on (\d+)")


class Front:
    """The front in a subprocess, in front of ``backends`` (ports on 127.0.0.1)."""

    def __init__(self, *backends):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)]
            + [f"127.0.0.1:{port}" for port in backends],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        line = self.proc.stdout.readline()
        match = LISTENING.search(line)
        if match is None:
            self.stop()
            raise AssertionError(f"the front did not start: {line!r}")
        self.port = int(match.group(1))

    def stop(self):
        stop_process(self.proc)
        self.proc.stdout.close()


def main(backends):
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.protocols import portforward

    class FailoverServer(portforward.ProxyServer):
        def connectionMade(self):
            # Nothing is read from the client until a backend is chosen.
            self.transport.pauseProducing()
            self._try(0)

        def _try(self, index):
            if self.transport.disconnected:
                return
            if index == len(backends):
                self.transport.loseConnection()  # no backend: the client retries
                return
            host, port = backends[index]
            client = self.clientProtocolFactory()
            client.setServer(self)
            d = TCP4ClientEndpoint(reactor, host, port, timeout=2).connect(client)
            d.addErrback(lambda _: self._try(index + 1))

    factory = portforward.ProxyFactory(None, None)
    factory.protocol = FailoverServer
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print(f"front listening on {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main([(host, int(port)) for host, port in
          (arg.rsplit(":", 1) for arg in sys.argv[1:])])
