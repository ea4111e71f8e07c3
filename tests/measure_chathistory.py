"""Measurement, not a test: how long does an IRC ``CHATHISTORY`` page take?

    python tests/measure_chathistory.py sqlite [MESSAGES]
    python tests/measure_chathistory.py pg [MESSAGES]

Starts a real ``twistd chat --irc ...`` on an SQLite file in a temporary
directory (``sqlite``) or on a PostgreSQL database of its own (``pg``, the
tests' temporary cluster, tests/pg_support.py), fills one room with MESSAGES
(default 10,000) from a line-protocol client, then times 20 of each of a few
CHATHISTORY requests from one IRC client (command sent to the batch's end
read, over loopback) and prints the median and maximum.
"""

import os
import re
import shutil
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support import ChatServer  # noqa: E402

IRC_LISTENING = r"irc listening on tcp:(\d+)"
TEXT = " " + "x" * 40
REQUESTS = [("LATEST #big * {limit}", 100), ("LATEST #big * {limit}", 500),
            ("BEFORE #big msgid={middle} {limit}", 100),
            ("AROUND #big msgid={middle} {limit}", 500)]


def fill(server, count):
    feeder = server.client()
    feeder.json_mode("feeder")
    feeder.send("/join big")
    for i in range(count):
        feeder.send(f"message {i}{TEXT}")
    last = feeder.expect_event("message", text=f"message {count - 1}{TEXT}", timeout=300)
    feeder.close()
    return last["id"]


def page_times(port, request, count=20):
    """Seconds from sending ``request`` to reading its batch's end, sorted."""
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")
    s.sendall(b"CAP LS 302\r\nCAP REQ :batch server-time message-tags draft/chathistory\r\n"
              b"NICK reader\r\nUSER r 0 * :r\r\nCAP END\r\nJOIN #big\r\n")
    for raw in f:
        if b" 366 " in raw:
            break
    times, lines = [], 0
    for _ in range(count):
        started = time.perf_counter()
        s.sendall(f"CHATHISTORY {request}\r\n".encode())
        lines = 0
        for raw in f:
            if b" PRIVMSG " in raw:
                lines += 1
            elif b" BATCH -" in raw:
                break
        times.append(time.perf_counter() - started)
    s.sendall(b"QUIT\r\n")
    s.close()
    return sorted(times), lines


def main(argv):
    engine = argv[1] if len(argv) > 1 else "sqlite"
    count = int(argv[2]) if len(argv) > 2 else 10000
    directory = tempfile.mkdtemp(prefix="chat-measure-")
    pg = None
    try:
        if engine == "pg":
            from twisted_chat.history.pgtemp import PostgresServer
            pg = PostgresServer()
            pg.start()
            db = pg.create_database()
        else:
            db = os.path.join(directory, "chat.sqlite")
        server = ChatServer("--irc", "tcp:0:interface=127.0.0.1", "--db", db, "--rate", "0",
                            "--max-backlog", str(64 << 20)).start()
        try:
            port = int(re.search(IRC_LISTENING, server.wait_for_log(IRC_LISTENING)).group(1))
            middle = fill(server, count) - count // 2
            for template, limit in REQUESTS:
                request = template.format(limit=limit, middle=middle)
                times, lines = page_times(port, request)
                print(f"{engine} {count} messages, CHATHISTORY {request.split()[0]} "
                      f"limit {limit}: {lines} lines, median {times[len(times) // 2] * 1000:.1f}"
                      f" ms, max {times[-1] * 1000:.1f} ms")
        finally:
            server.stop()
    finally:
        if pg is not None:
            pg.destroy()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv)
