"""Test helpers for the web face: a blocking WebSocket client and an HTTP GET.

Like support.py they run no reactor in the test process (the same under
pytest and trial).
"""

import base64
import hashlib
import json
import os
import re
import socket
import struct
import time

from .support import DEFAULT_TIMEOUT

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def http_get(port, path="/", headers=None, timeout=DEFAULT_TIMEOUT):
    """(status, {lowercased header: value}, body) of one GET on loopback."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


class HandshakeRefused(Exception):
    def __init__(self, status, response):
        super().__init__(f"handshake refused: {status}")
        self.status = status
        self.response = response


class WSClient:
    """A blocking WebSocket client speaking the chat's JSON events."""

    def __init__(self, port, origin="self", path="/ws", timeout=DEFAULT_TIMEOUT, preamble=b""):
        # ``preamble``: bytes sent before the handshake (a PROXY header)
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if preamble:
            self.sock.sendall(preamble)
        key = base64.b64encode(os.urandom(16))
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key.decode()}",
                 "Sec-WebSocket-Version: 13"]
        if origin == "self":
            origin = f"http://127.0.0.1:{port}"
        if origin is not None:
            lines.append(f"Origin: {origin}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self._buf = b""
        while b"\r\n\r\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self._buf += chunk
        head, _, self._buf = self._buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            self.sock.close()
            raise HandshakeRefused(status, head + b"\r\n\r\n" + self._buf)
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        assert accept in head, head
        self.seen = []  # every event received, decoded
        self.closed = None  # (code, reason) once a close frame came

    # -- frames ----------------------------------------------------------

    def send_frame(self, opcode, payload, fin=True):
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 0x10000:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send(self, *lines):
        for line in lines:
            self.send_frame(0x1, line.encode("utf-8"))

    def _read(self, n, deadline):
        while len(self._buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for a frame; seen: {self.seen[-10:]}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise EOFError(f"connection closed; seen: {self.seen[-10:]}")
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def frame(self, timeout=None):
        """(opcode, payload) of the next frame; server pings are answered."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            b0, b1 = self._read(2, deadline)
            assert not b1 & 0x80, "server frames are never masked"
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2, deadline))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8, deadline))[0]
            payload = self._read(n, deadline)
            opcode = b0 & 0x0F
            if opcode == 0x9:
                self.send_frame(0xA, payload)
                continue
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.closed = (code, payload[2:].decode("utf-8", "replace"))
            return opcode, payload

    def event(self, timeout=None):
        opcode, payload = self.frame(timeout)
        if opcode == 0x8:
            raise EOFError(f"closed {self.closed}; seen: {self.seen[-10:]}")
        assert opcode == 0x1, f"not a text frame: {opcode}"
        event = json.loads(payload.decode("utf-8"))
        self.seen.append(event)
        return event

    def expect_event(self, type, timeout=None, **fields):
        """Read events until one of ``type`` whose fields match."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            event = self.event(max(deadline - time.monotonic(), 0.001))
            if event["type"] == type and all(event.get(k) == v for k, v in fields.items()):
                return event

    def expect_close(self, timeout=None):
        """Read until the server's close frame; (code, reason)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            opcode, _ = self.frame(max(deadline - time.monotonic(), 0.001))
            if opcode == 0x8:
                return self.closed

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


WEB_LISTENING = re.compile(r"web listening on tcp:(\d+)")


def web_port(server, timeout=DEFAULT_TIMEOUT):
    """The port of a ChatServer's first ``--web`` listener, once announced."""
    for line in list(server.log):
        m = WEB_LISTENING.search(line)
        if m:
            return int(m.group(1))
    return int(WEB_LISTENING.search(server.wait_for_log(WEB_LISTENING, timeout)).group(1))
