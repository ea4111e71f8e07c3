"""Measurement, not a test: does a login in flight (scrypt at the default cost,
about 0.1-0.2 s of CPU each) delay other clients?

    python tests/measure_login_latency.py

Starts a real ``twistd chat --auth chat-passwd:...`` with 8 accounts, times 40
``/ping`` round trips of an idle probe client, then 20 more while 8 other
connections log in at once, and prints the medians and maxima.
"""

import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support import ChatServer  # noqa: E402
from twisted_chat import passwords  # noqa: E402

USERS = 8


def pings(client, n):
    times = []
    for i in range(n):
        t = time.perf_counter()
        client.send(f"/ping {i}")
        client.expect_event("pong", token=str(i))
        times.append((time.perf_counter() - t) * 1000)
    return times


def main():
    directory = tempfile.mkdtemp(prefix="chat-login-latency-")
    path = os.path.join(directory, "accounts")
    for i in range(USERS):
        passwords.set_account(path, f"user{i}", passwords.hash_password(f"pw{i}"))
    server = ChatServer("--auth", "chat-passwd:accounts", "--guests", "yes", "--rate", "0",
                        "--max-per-ip", "0", directory=directory).start()
    try:
        probe = server.client()
        probe.json_mode("probe")
        idle = pings(probe, 40)
        users = [server.client() for _ in range(USERS)]
        for user in users:
            user.json_mode()
        started = time.perf_counter()
        for i, user in enumerate(users):
            user.send(f"/login user{i} pw{i}")
        busy = pings(probe, 20)
        for i, user in enumerate(users):
            user.expect_event("nick", new=f"user{i}")
        total = (time.perf_counter() - started) * 1000
        print(f"ping idle: median {statistics.median(idle):.2f} ms, max {max(idle):.2f} ms")
        print(f"ping during {USERS} logins: median {statistics.median(busy):.2f} ms, "
              f"max {max(busy):.2f} ms")
        print(f"{USERS} concurrent logins all answered after {total:.0f} ms")
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
