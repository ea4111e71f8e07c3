"""Measurement, not a test: what one input message costs the server, per face.

    python tests/measure_input_cost.py line|irc|ws [--messages M] [--profile]

Two members of one face in one room, over StringTransports and a Clock
(no sockets, no load generator): the first says M messages (30,000), fed
to its protocol 50 to a read as a client's socket would bring them, a turn
after each read; the time per message covers the face's framing and
parsing, the hub, the rendering for the face and the other member's share.
A room of 1,000 shares each rendering: this is the per-message part of the
fan-out's cost, beside the per-delivery part that tests/measure_face_fanout.py
measures. ``--profile`` prints cProfile's top functions.
"""

import argparse
import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from measure_face_fanout import factories, masked, open_websocket  # noqa: E402

TEXT = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx T0000001234567890"  # the benchmark's


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("face", choices=["line", "irc", "ws"])
    ap.add_argument("--messages", type=int, default=30000)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()

    clock = Clock()
    _, factory = factories(a.face, clock)

    def connect(i):
        addr = IPv4Address("TCP", "127.0.0.1", 10000 + i)
        proto = factory.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        if a.face == "ws":
            open_websocket(proto)
            proto.dataReceived(masked(b"/join lobby"))
        elif a.face == "line":
            proto.dataReceived(f"/nick u{i}\n/join lobby\n".encode())
        else:
            proto.dataReceived(f"NICK u{i}\r\nUSER u 0 * :u\r\nJOIN #lobby\r\n".encode())
        clock.advance(0)
        return proto, transport

    sender, sent = connect(0)
    _, received = connect(1)
    clock.advance(5)
    if a.face == "line":
        one = (TEXT + "\r\n").encode()
    elif a.face == "irc":
        one = f"PRIVMSG #lobby :{TEXT}\r\n".encode()
    else:
        one = masked(TEXT.encode())
    read = one * 50
    got = [0]

    def run():
        for _ in range(a.messages // 50):
            sender.dataReceived(read)
            clock.advance(0)
            got[0] += len(received.value())
            sent.clear()
            received.clear()

    sent.clear()
    received.clear()
    t0 = time.perf_counter()
    if a.profile:
        profile = cProfile.Profile()
        profile.runcall(run)
    else:
        run()
    dt = time.perf_counter() - t0
    if not got[0]:
        raise SystemExit("the other member received nothing")
    print(f"{a.face}: {1e6 * dt / a.messages:.2f} us per input message")
    if a.profile:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
