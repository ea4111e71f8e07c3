"""Measurement, not a test: the IRC face's registration and first join, in
one process, without a load generator.

    python tests/measure_irc_registration.py [--members N] [--profile]

N IRC connections (6,000), StringTransports from distinct addresses, each
sending NICK and USER in turn: each gets the welcome burst and joins
``#lobby``, where it is sent the names of everybody before it. Prints the
time all of them took; ``--profile`` prints cProfile's top functions too.
"""

import argparse
import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from twisted_chat.faces.irc.protocol import IRCFactory  # noqa: E402
from twisted_chat.hub import Hub  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=6000)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    clock = Clock()
    hub = Hub(server_name="chat.test", clock=clock.seconds, replay=0)
    factory = IRCFactory(hub, clock=clock, rate=1e6, burst=10 ** 6, max_backlog=1 << 30)
    kept = []

    def register_all():
        for i in range(args.members):
            # Distinct addresses: --max-per-ip would refuse the rest.
            address = IPv4Address("TCP", f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 6667)
            transport = StringTransport(peerAddress=address)
            proto = factory.buildProtocol(address)
            proto.makeConnection(transport)
            proto.dataReceived(f"NICK u{i}\r\nUSER u 0 * :u\r\n".encode())
            clock.advance(0)
            transport.clear()
            kept.append(transport)

    profiler = cProfile.Profile() if args.profile else None
    start = time.perf_counter()
    if profiler:
        profiler.runcall(register_all)
    else:
        register_all()
    seconds = time.perf_counter() - start
    print(f"{args.members} IRC registrations: {seconds:.2f} s "
          f"({seconds / args.members * 1e6:.0f} µs each){' (profiled)' if profiler else ''}")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
