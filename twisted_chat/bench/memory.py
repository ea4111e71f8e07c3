"""Evidence for issue 4: a stalled reader cannot grow the server's memory,
and does not slow anybody else down.

Run ``python -m twisted_chat.bench.memory`` (``--help`` for the knobs).

Memory: for each ``--max-backlog`` setting and each flood size, a fresh
``twistd chat`` gets one client that never reads (tiny receive buffer), one
sender that floods the room with N messages as fast as it can, and one
reader that reads them all. The figure is the server's peak RSS (VmHWM) at
the end minus its RSS before the flood. ``--max-backlog 1G`` stands in for
"no bound" as the control.

Latency: a paced flood (``--pace`` messages/s) to a reader, once without and
once with a stalled client in the room; the reader's delivery latency
percentiles should match.

Overload (issue 12): ``--overload-clients`` clients in one room, history on
(the default SQLite file), each flooding ``--overload-messages`` lines of
the longest length accepted (``--max-line``, 4096 bytes) as fast as the
server reads them, while every one of them reads everything it is sent.
Messages wait in the server's memory until their group commit; the history
store pauses input when they hold more than its bound in bytes. The figure
is the server's peak RSS (VmHWM), and its growth over the RSS before the
flood.
"""

import argparse
import selectors
import socket
import threading
import time

from .servers import OurServer

UNBOUNDED = 1 << 30


def _stalled(port):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"/nick stalled\r\n")
    return sock


class _Reader(threading.Thread):
    """Reads text-mode lines; records the arrival time of each ``<sender> #SEQ`` message."""

    def __init__(self, port, nick):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(f"/nick {nick}\r\n".encode())
        self.arrivals = {}
        self.ready = threading.Event()
        self.lines = 0
        self.joined = set()

    def run(self):
        buf = b""
        while True:
            try:
                data = self.sock.recv(1 << 18)
            except OSError:
                return
            if not data:
                return
            buf += data
            *lines, buf = buf.split(b"\r\n")
            now = time.monotonic()
            for line in lines:
                self.lines += 1
                if b"-- in #lobby" in line:
                    self.ready.set()
                if line.endswith(b" joined") and b"#lobby -- " in line:
                    self.joined.add(line.split(b" -- ", 1)[1].split(b" ")[0].decode())
                i = line.find(b"> #")
                if i >= 0:
                    seq = int(line[i + 3:line.index(b" ", i + 3)])
                    self.arrivals[seq] = now


def _sender(port):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # timing, not Nagle
    sock.sendall(b"/nick sender\r\n")
    return sock


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _server(backlog):
    return OurServer(["--max-backlog", str(backlog), "--rate", "0", "--max-per-ip", "0"]).start()


def memory_run(backlog, messages, size, out):
    server = _server(backlog)
    try:
        reader = _Reader(server.port, "reader")
        reader.start()
        sender = _sender(server.port)
        stalled = _stalled(server.port)
        _wait(lambda: {"sender", "stalled"} <= reader.joined, 10, "registration")
        time.sleep(0.5)
        before = server.status("VmRSS")
        hwm_before = server.status("VmHWM")
        pad = "x" * size
        started = time.monotonic()
        chunk = []
        for seq in range(messages):
            chunk.append(f"#{seq} {pad}\r\n".encode())
            if len(chunk) == 100:
                sender.sendall(b"".join(chunk))
                chunk = []
        if chunk:
            sender.sendall(b"".join(chunk))
        _wait(lambda: len(reader.arrivals) >= messages, 120, "the reader to get every message")
        took = time.monotonic() - started
        hwm = server.status("VmHWM")
        cut = _seen(server, "slow consumer")
        out(f"  max-backlog {_fmt(backlog):>8}  flood {messages:>6} x {size} B "
            f"({messages * (size + 30) / 1e6:5.1f} MB to the stalled client):  "
            f"RSS before {before / 1024:6.1f} MiB, peak {hwm / 1024:6.1f} MiB, "
            f"growth {(hwm - before) / 1024:6.1f} MiB  "
            f"[stalled client {'cut off' if cut else 'still connected'}; "
            f"VmHWM before {hwm_before / 1024:.1f} MiB; {took:.1f} s]")
        for s in (sender, stalled, reader.sock):
            s.close()
        return {"growth_kib": hwm - before, "cut_off": cut}
    finally:
        server.stop()


def _seen(server, fragment):
    return any(fragment in line for line in list(server.tail))


def _fmt(n):
    if n >= 1 << 30:
        return f"{n >> 30}G"
    if n >= 1 << 20:
        return f"{n >> 20}M"
    return f"{n >> 10}K"


def latency_run(pace, seconds, with_stalled, out):
    server = _server(262144)
    try:
        reader = _Reader(server.port, "reader")
        reader.start()
        sender = _sender(server.port)
        stalled = _stalled(server.port) if with_stalled else None
        _wait(lambda: {"sender", "stalled" if with_stalled else "sender"} <= reader.joined, 10,
              "registration")
        time.sleep(0.5)
        total = int(pace * seconds)
        sent = {}
        pad = "y" * 1000  # big enough to fill the stalled client's buffers
        start = time.monotonic()
        for seq in range(total):
            due = start + seq / pace
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent[seq] = time.monotonic()
            sender.sendall(f"#{seq} {pad}\r\n".encode())
        _wait(lambda: len(reader.arrivals) >= total, 60, "the reader to get every message")
        lat = sorted((reader.arrivals[s] - sent[s]) * 1000 for s in range(total))
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
        cut = _seen(server, "slow consumer")
        out(f"  {'with' if with_stalled else 'without':>7} a stalled client: {total} msgs at "
            f"{pace}/s, reader latency p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms, "
            f"max {lat[-1]:.2f} ms"
            + (f"  [stalled client cut off: {'yes' if cut else 'no'}]" if with_stalled else ""))
        for s in (sender, stalled, reader.sock):
            if s is not None:
                s.close()
    finally:
        server.stop()


MAX_LINE = 4096  # twistd chat's default --max-line


def overload_run(clients, messages, out, size=MAX_LINE, timeout=300.0):
    """``clients`` members each flood ``messages`` lines of ``size`` bytes
    into one room with history on, reading everything they are sent."""
    server = OurServer(["--rate", "0", "--max-per-ip", "0"]).start()
    socks = []
    try:
        for i in range(clients):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(f"/nick flood{i}\r\n".encode())
            socks.append(sock)
        counts = [0] * clients
        ready = [False] * clients
        done = threading.Event()
        expected = messages * (clients - 1)  # text mode: no echo of one's own

        def read_all():
            sel = selectors.DefaultSelector()
            for i, sock in enumerate(socks):
                sel.register(sock, selectors.EVENT_READ, i)
            tails = [b""] * clients
            while not done.is_set():
                for key, _ in sel.select(0.2):
                    i = key.data
                    try:
                        data = key.fileobj.recv(1 << 18)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(key.fileobj)
                        continue
                    if not ready[i]:
                        tails[i] += data
                        ready[i] = b"-- in #lobby:" in tails[i]  # its names line
                    counts[i] += data.count(b"\n")
            sel.close()

        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        _wait(lambda: all(ready), 30, "registration")
        time.sleep(0.5)  # the joins are through: from now on every line is a message
        counts[:] = [0] * clients
        before = server.status("VmRSS")
        flood = (b"z" * size + b"\n") * messages
        started = time.monotonic()
        senders = [threading.Thread(target=sock.sendall, args=(flood,), daemon=True)
                   for sock in socks]
        for t in senders:
            t.start()
        try:
            _wait(lambda: min(counts) >= expected, timeout, "every client to get every message")
        finally:
            done.set()
        took = time.monotonic() - started
        hwm = server.status("VmHWM")
        paused = sum("pausing input" in line for line in list(server.tail))
        cut = _seen(server, "slow consumer")
        total = clients * messages
        out(f"  {clients} clients x {messages} lines of {size} B ({total * size / 1e6:.0f} MB in, "
            f"{total * size * (clients - 1) / 1e6:.0f} MB out), history on: "
            f"RSS before {before / 1024:.1f} MiB, peak (VmHWM) {hwm / 1024:.1f} MiB, "
            f"growth {(hwm - before) / 1024:.1f} MiB  [{took:.1f} s; {total / took:.0f} msgs/s; "
            f"input paused {paused} time(s) (last 50 log lines); "
            f"{'a client was cut off' if cut else 'nobody cut off'}]")
        return {"rss_before_kib": before, "hwm_kib": hwm, "growth_kib": hwm - before,
                "seconds": took, "cut_off": cut}
    finally:
        for sock in socks:
            sock.close()
        server.stop()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m twisted_chat.bench.memory", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", default="10000,40000",
                    help="flood sizes, comma-separated (default 10000,40000)")
    ap.add_argument("--size", type=int, default=1000, help="bytes of text per message")
    ap.add_argument("--backlogs", default=f"65536,262144,1048576,{UNBOUNDED}",
                    help="--max-backlog settings to compare (the last, 1G, is the control)")
    ap.add_argument("--pace", type=int, default=1000, help="latency runs: messages/s")
    ap.add_argument("--seconds", type=float, default=3.0, help="latency runs: duration")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--overload-clients", type=int, default=20,
                    help="overload: clients flooding max-length lines (default 20; 0: skip)")
    ap.add_argument("--overload-messages", type=int, default=1000,
                    help="overload: lines each client floods (default 1000)")
    ap.add_argument("--only-overload", action="store_true", help="run the overload case only")
    args = ap.parse_args(argv)

    def out(line):
        print(line, flush=True)

    if args.overload_clients:
        out("Peak server RSS under a flood of max-length lines, history on:")
        overload_run(args.overload_clients, args.overload_messages, out)
    if args.only_overload:
        return
    out("Peak server RSS growth with one stalled reader and a flood:")
    for backlog in [int(b) for b in args.backlogs.split(",")]:
        for n in [int(m) for m in args.messages.split(",")]:
            memory_run(backlog, n, args.size, out)
    if not args.no_latency:
        out("Delivery latency of a normal reader during a paced flood:")
        latency_run(args.pace, args.seconds, False, out)
        latency_run(args.pace, args.seconds, True, out)


if __name__ == "__main__":
    main()
