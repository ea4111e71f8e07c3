"""The load generator: member connections spread over worker processes.

Each worker runs its own ``epoll`` loop over its share of the members (no
Twisted, no per-line Python work): received lines are counted with
``bytes.count(b"\\n")``; only a few *probe* connections per worker split lines
and parse the send timestamp embedded in each message, which is enough for the
latency percentiles. The coordinator (:class:`LoadGenerator`) talks to the
workers over pipes and starts every phase at a common time.

Wire format: members speak the chat's default *text* mode (the bare baseline
has no modes; in text mode a sender gets no echo on either server, so each
message is expected ``members - 1`` times). A message line is
``xxxx… T<16-digit send time in µs, CLOCK_MONOTONIC>``; CLOCK_MONOTONIC is
shared by all processes on the machine.

Other faces of the server (``face``): ``irc`` members register with NICK and
USER, JOIN ``#lobby`` (registered at RPL_ENDOFNAMES) and send ``PRIVMSG
#lobby :xxxx… T<stamp>``; each PRIVMSG line received is a delivery (PINGs
are answered). ``ws`` members open a WebSocket (HTTP Upgrade to
``/ws`` with the server's own Origin), send ``/join lobby`` and their
messages as masked text frames (JSON mode, registered at the ``names`` event
of lobby), and count the server's text frames; pings are answered. JSON mode
echoes a sender's own message, so there each one is expected ``members``
times (``echo`` in the results).
"""

import array
import base64
import errno
import multiprocessing
import os
import resource
import select
import socket
import time

from .servers import raise_fd_limit

# Registration: our server registers a connection on /join and answers with
# the room's names line ("-- in #lobby: ..."); the bare server needs nothing.
JOIN = b"/join lobby\r\n"
NAMES_MARK = b"-- in #lobby:"
STAMP = b" T"
STAMP_DIGITS = 16
FACES = ("line", "irc", "ws")
IRC_NAMES_MARK = b"#lobby :End of /NAMES"  # RPL_ENDOFNAMES: the end of JOIN's answer
WS_NAMES_MARK = b'"type":"names","room":"lobby"'
WS_HANDSHAKE = ("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Origin: http://127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n")

_RECV = 1 << 18


def _now_us():
    return time.monotonic_ns() // 1000


def ws_frame(payload, opcode=1):
    """A client's WebSocket frame (RFC 6455 5.2): final, masked with a fresh key."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    else:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    key = os.urandom(4)
    mask = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    return head + key + masked


def ws_frames(buf):
    """The complete frames at the start of ``buf``: ([(opcode, payload)], rest)."""
    frames = []
    i, n = 0, len(buf)
    while n - i >= 2:
        length = buf[i + 1] & 0x7F
        h = 2
        if length == 126:
            h = 4
            if n - i < h:
                break
            length = int.from_bytes(buf[i + 2:i + 4], "big")
        elif length == 127:
            h = 10
            if n - i < h:
                break
            length = int.from_bytes(buf[i + 2:i + 10], "big")
        if buf[i + 1] & 0x80:
            h += 4  # a masked frame (a server never sends one): skipped whole
        if n - i < h + length:
            break
        frames.append((buf[i] & 0x0F, buf[i + h:i + h + length]))
        i += h + length
    return frames, buf[i:]


def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Conn:
    __slots__ = ("sock", "fd", "index", "registered", "tail", "lines", "probe", "pending",
                 "closed", "http")

    def __init__(self, sock, index, probe):
        self.sock = sock
        self.fd = sock.fileno()
        self.index = index
        self.registered = False
        self.tail = b""  # probe connections: the partial last line
        self.lines = 0
        self.probe = probe
        self.pending = b""  # bytes a sender could not write yet
        self.closed = False
        self.http = False  # ws: the 101 answer's head is being read (into tail)


class Worker:
    """One process's share of the members; driven by commands over a pipe."""

    def __init__(self, pipe, wid, face="line"):
        self.pipe = pipe
        self.wid = wid
        self.face = face
        self.port = None
        self.ep = select.epoll()
        self.conns = {}  # fd -> _Conn
        self.senders = []
        self.samples = array.array("q")
        self.errors = 0

    def serve(self):
        raise_fd_limit()
        while True:
            cmd, args = self.pipe.recv()
            if cmd == "quit":
                break
            self.pipe.send(getattr(self, "cmd_" + cmd)(**args))
        for c in list(self.conns.values()):
            self._close(c)

    # -- phases ----------------------------------------------------------------

    def cmd_connect(self, port, indices, senders, probes, rate, register, timeout):
        """Open connections at ``rate``/s; wait until each is registered."""
        start = time.monotonic()
        self.port = port
        todo = list(indices)
        sender_set = set(senders)
        opened = 0
        waiting = 0
        nprobes = 0
        probe_set = set()
        candidates = [i for i in indices if i not in sender_set]
        for k in range(min(probes, len(candidates))):
            n = len(candidates)
            probe_set.add(candidates[(k * n + n // 2) // min(probes, n)])
        deadline = start + timeout
        while (todo or waiting) and time.monotonic() < deadline:
            due = int((time.monotonic() - start) * rate) + 1
            while todo and opened < due:
                index = todo.pop(0)
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                # RST on close: no TIME_WAIT eating loopback ports between runs.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                err = s.connect_ex(("127.0.0.1", port))
                if err not in (0, errno.EINPROGRESS):
                    self.errors += 1
                    s.close()
                    opened += 1
                    continue
                # Probes spread over the members: the server sends in join
                # order, so the first members alone would see the best case.
                probe = index in probe_set
                nprobes += probe
                c = _Conn(s, index, probe)
                self.conns[c.fd] = c
                if index in sender_set:
                    self.senders.append(c)
                self.ep.register(c.fd, select.EPOLLOUT | select.EPOLLIN)
                opened += 1
                waiting += 1
            for fd, ev in self.ep.poll(0.001):
                c = self.conns[fd]
                if ev & select.EPOLLOUT and not c.registered:
                    if ev & (select.EPOLLERR | select.EPOLLHUP):
                        self.errors += 1
                        self._close(c)
                        waiting -= 1
                        continue
                    self.ep.modify(fd, select.EPOLLIN)
                    if self.face == "irc":
                        self._send(c, b"NICK b%d\r\nUSER b%d 0 * :bench\r\nJOIN #lobby\r\n"
                                   % (c.index, c.index))
                    elif self.face == "ws":
                        c.http = True
                        key = base64.b64encode(os.urandom(16)).decode()
                        self._send(c, WS_HANDSHAKE.format(port=port, key=key).encode())
                    elif register:
                        c.sock.send(JOIN)
                    else:
                        c.registered = True
                        waiting -= 1
                    continue
                if ev & select.EPOLLIN or ev & (select.EPOLLERR | select.EPOLLHUP):
                    was = c.registered
                    data = self._recv(c)
                    if data is None:
                        if not was:
                            waiting -= 1
                        continue
                    if self.face == "ws":
                        if not was and c.registered:  # seen by _recv_ws
                            waiting -= 1
                        continue
                    if not c.registered:
                        buf = c.tail + data
                        if self.face == "irc" and b"PING " in buf:
                            self._irc_pings(c, buf)
                        if (IRC_NAMES_MARK if self.face == "irc" else NAMES_MARK) in buf:
                            c.registered = True
                            c.tail = b""
                            waiting -= 1
                        else:
                            c.tail = buf[-len(NAMES_MARK):]
        elapsed = time.monotonic() - start
        registered = sum(1 for c in self.conns.values() if c.registered)
        for c in self.conns.values():
            if self.face != "ws":  # ws: the tail is a frame in progress
                c.tail = b""
        return {"registered": registered, "seconds": elapsed, "errors": self.errors}

    def cmd_settle(self, quiet, timeout):
        """Read until nothing arrives for ``quiet`` seconds (join notices drain)."""
        start = last = time.monotonic()
        while time.monotonic() - last < quiet and time.monotonic() - start < timeout:
            for fd, ev in self.ep.poll(0.01):
                if self._recv(self.conns[fd]):
                    last = time.monotonic()
        for c in self.conns.values():
            c.lines = 0
            if self.face != "ws":
                c.tail = b""
        return {"seconds": time.monotonic() - start}

    def cmd_run(self, t0, rate, duration, drain_quiet, drain_max, pad):
        """Send ``rate`` msgs/s (this worker's share) from ``t0`` for ``duration`` s, then drain."""
        self.samples = array.array("q")
        for c in self.conns.values():
            c.lines = 0
            if self.face != "ws":
                c.tail = b""
        senders = [c for c in self.senders if not c.closed]
        total = int(rate * duration) if senders else 0
        filler = b"x" * pad
        sent = 0
        cpu0 = _cpu()
        poll = self.ep.poll
        conns = self.conns
        recv = self._recv
        # The hot path, inlined: most members only count lines; probes (and
        # closed sockets) take the general path, as do the other faces
        # (WebSocket frames; IRC lines, where only PRIVMSGs count).
        counting = {fd: [c.sock.recv, 0] for fd, c in conns.items()
                    if not c.probe and self.face == "line"}
        if self.face == "irc":
            head = b"PRIVMSG #lobby :"
        else:
            head = b""
        size = _RECV
        while time.monotonic() < t0:
            time.sleep(min(0.001, max(0.0, t0 - time.monotonic())))
        end = t0 + duration
        last_data = time.monotonic()
        while True:
            now = time.monotonic()
            if sent < total:
                due = min(total, int((now - t0) * rate) + 1)
                while sent < due:
                    c = senders[sent % len(senders)]
                    if self.face == "ws":
                        line = ws_frame(b"%s T%016d" % (filler, _now_us()))
                    else:
                        line = b"%s%s T%016d\r\n" % (head, filler, _now_us())
                    self._send(c, line)
                    sent += 1
            elif now - last_data > drain_quiet or now > end + drain_max:
                break
            got = False
            for fd, ev in poll(0.0005 if sent < total else 0.01):
                entry = counting.get(fd)
                if entry is not None:
                    try:
                        data = entry[0](size)
                    except OSError:
                        data = b""
                    if data:
                        entry[1] += data.count(b"\n")
                        got = True
                        continue
                    del counting[fd]  # EOF or error: the general path closes it
                    c = conns.get(fd)
                    if c is not None:
                        c.lines += entry[1]
                        entry[1] = 0
                        recv(c)
                elif fd in conns and recv(conns[fd]):
                    got = True
            if got:
                last_data = time.monotonic()
            if sent < total:
                for c in senders:
                    if c.pending:
                        self._send(c, b"")
        for fd, entry in counting.items():
            c = conns.get(fd)
            if c is not None:
                c.lines += entry[1]
        received = sum(c.lines for c in self.conns.values())
        probes = [c for c in self.conns.values() if c.probe and not c.closed]
        return {
            "sent": sent,
            "received": received,
            "receivers": sum(1 for c in self.conns.values() if not c.closed),
            "echo": int(self.face == "ws"),
            "samples": self.samples.tobytes(),
            "probes": len(probes),
            "cpu": _cpu() - cpu0,
            "wall": time.monotonic() - t0,
            "errors": self.errors,
        }

    # -- socket work -----------------------------------------------------------

    def _send(self, c, line):
        data = c.pending + line
        try:
            n = c.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            self.errors += 1
            n = len(data)
        c.pending = data[n:]

    def _irc_pings(self, c, data):
        """Answer each complete PING line of ``data``; return how many."""
        pings = 0
        for line in data.split(b"\n")[:-1]:
            if line.startswith(b"PING "):
                self._send(c, b"PONG " + line[5:].rstrip(b"\r") + b"\r\n")
                pings += 1
        return pings

    def _recv_irc(self, c, data):
        """IRC lines: a delivery is a PRIVMSG line (not the JOINs of a big
        channel's presence batches...); PINGs answered; probes record latencies."""
        if c.registered:
            buf = c.tail + data if c.tail else data
            cut = buf.rfind(b"\n") + 1
            lines, c.tail = buf[:cut], buf[cut:]
            c.lines += lines.count(b" PRIVMSG ")
            if b"PING " in lines:
                self._irc_pings(c, lines)
            if c.probe and lines:
                now = _now_us()
                append = self.samples.append
                for line in lines.split(b"\n"):
                    i = line.rfind(STAMP)
                    if i >= 0 and b" PRIVMSG " in line:
                        stamp = line[i + 2:i + 2 + STAMP_DIGITS]
                        if len(stamp) == STAMP_DIGITS and stamp.isdigit():
                            append(now - int(stamp))
        return data

    def _recv_ws(self, c, data):
        """WebSocket bytes: the 101 answer, then frames (text frames are
        counted, probes record latencies, pings answered). None if closed."""
        if c.http:
            buf = c.tail + data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                c.tail = buf
                return data
            if not buf.startswith(b"HTTP/1.1 101"):
                self.errors += 1
                self._close(c)
                return None
            c.http = False
            self._send(c, ws_frame(b"/join lobby"))
            c.tail, data = b"", buf[end + 4:]
        frames, c.tail = ws_frames(c.tail + data if c.tail else data)
        now = _now_us() if c.probe else 0
        for opcode, payload in frames:
            if opcode == 1:
                if not c.registered:
                    c.registered = WS_NAMES_MARK in payload
                    continue
                c.lines += 1
                if c.probe:
                    i = payload.rfind(STAMP)
                    stamp = payload[i + 2:i + 2 + STAMP_DIGITS]
                    if i >= 0 and len(stamp) == STAMP_DIGITS and stamp.isdigit():
                        self.samples.append(now - int(stamp))
            elif opcode == 9:
                self._send(c, ws_frame(payload, opcode=0xA))
            elif opcode == 8:
                self.errors += 1
                self._close(c)
                return None
        return data

    def _recv(self, c):
        """Read once; count lines (probes also record latencies). None on EOF."""
        try:
            data = c.sock.recv(_RECV)
        except BlockingIOError:
            return b""
        except OSError:
            data = b""
        if not data:
            self.errors += 1
            self._close(c)
            return None
        if self.face == "ws":
            return self._recv_ws(c, data)
        if self.face == "irc":
            return self._recv_irc(c, data)
        c.lines += data.count(b"\n")
        if c.probe and c.registered:
            now = _now_us()
            data = c.tail + data
            cut = data.rfind(b"\n") + 1
            c.tail = data[cut:]
            append = self.samples.append
            for line in data[:cut].split(b"\n"):
                i = line.rfind(STAMP)
                if i >= 0:
                    stamp = line[i + 2:i + 2 + STAMP_DIGITS]
                    if len(stamp) == STAMP_DIGITS and stamp.isdigit():
                        append(now - int(stamp))
        return data

    def _close(self, c):
        if c.closed:
            return
        c.closed = True
        try:
            self.ep.unregister(c.fd)
        except (OSError, ValueError):
            pass
        self.conns.pop(c.fd, None)
        c.sock.close()


def _worker_main(pipe, wid, face):
    Worker(pipe, wid, face).serve()


class LoadGenerator:
    """Coordinates ``workers`` worker processes holding ``members`` connections."""

    def __init__(self, members, senders, workers=1, probes=16, face="line"):
        if face not in FACES:
            raise ValueError(f"unknown face {face!r}")
        self.members = members
        self.nsenders = senders
        ctx = multiprocessing.get_context("fork")
        self.workers = []
        self.shares = []
        sender_ids = set(range(0, members, max(1, members // senders)))
        sender_ids = set(sorted(sender_ids)[:senders])
        for wid in range(workers):
            indices = list(range(wid, members, workers))
            mine = [i for i in indices if i in sender_ids]
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, wid, face), daemon=True)
            proc.start()
            child.close()
            self.workers.append((proc, parent))
            self.shares.append((indices, mine))
        self.probes_per_worker = max(1, probes // workers)

    def _all(self, cmd, per_worker):
        for (proc, pipe), args in zip(self.workers, per_worker):
            pipe.send((cmd, args))
        return [pipe.recv() for proc, pipe in self.workers]

    def connect(self, port, rate=2000.0, register=True, timeout=60.0):
        n = len(self.workers)
        results = self._all("connect", [
            dict(port=port, indices=indices, senders=mine, probes=self.probes_per_worker,
                 rate=rate / n, register=register, timeout=timeout)
            for indices, mine in self.shares])
        return {
            "registered": sum(r["registered"] for r in results),
            "seconds": max(r["seconds"] for r in results),
            "errors": sum(r["errors"] for r in results),
        }

    def settle(self, quiet=1.5, timeout=60.0):
        results = self._all("settle", [dict(quiet=quiet, timeout=timeout)] * len(self.workers))
        return max(r["seconds"] for r in results)

    def run(self, rate, duration, pad=32, drain_quiet=0.5, drain_max=5.0):
        """Offer ``rate`` messages/s for ``duration`` s; return the raw measurements."""
        t0 = time.monotonic() + 0.2
        args = []
        for indices, mine in self.shares:
            args.append(dict(t0=t0, rate=rate * len(mine) / self.nsenders, duration=duration,
                             drain_quiet=drain_quiet, drain_max=drain_max, pad=pad))
        results = self._all("run", args)
        samples = array.array("q")
        for r in results:
            samples.frombytes(r["samples"])
        return {
            "sent": sum(r["sent"] for r in results),
            "received": sum(r["received"] for r in results),
            "receivers": sum(r["receivers"] for r in results),
            "echo": results[0]["echo"] if results else 0,
            "samples": samples,
            "cpu": sum(r["cpu"] for r in results),
            "wall": max(r["wall"] for r in results),
            "errors": sum(r["errors"] for r in results),
        }

    def close(self):
        for proc, pipe in self.workers:
            try:
                pipe.send(("quit", {}))
            except OSError:
                pass
        for proc, pipe in self.workers:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join()
            pipe.close()
