"""Regenerate docs/screenshot.png: a real session of the desktop client under Xvfb.

Run from a checkout with the package and its test extra installed (and
Debian's xvfb and imagemagick)::

    python docs/make_screenshot.py [OUTPUT.png]

It starts a private Xvfb, a real ``twistd chat`` on a loopback port, the
real client window (through tests/tk_driver.py, the same driver the window
tests use) and a few scripted socket clients, holds a short conversation, and
saves a PNG of the window.
"""

import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support import ChatServer  # noqa: E402
from tests.window_support import WindowClient, Xvfb  # noqa: E402


def wait_line(window, fragment):
    window.wait_for(lambda s: any(fragment in line for line in s["lines"]), repr(fragment))


def main(argv):
    out = os.path.abspath(argv[1] if len(argv) > 1 else os.path.join(ROOT, "docs",
                                                                    "screenshot.png"))
    if shutil.which("import") is None:
        sys.exit("needs ImageMagick's import (Debian: apt-get install imagemagick)")
    xvfb = Xvfb()
    display = xvfb.start()
    if display is None:
        sys.exit("needs Xvfb (Debian: apt-get install xvfb)")
    server = ChatServer("--motd", "Welcome to the team chat. Be kind; /help lists commands.")
    clients = []
    window = None
    try:
        server.start()

        def peer(nick):
            c = server.client()
            clients.append(c)
            c.json_mode(nick)
            return c

        bob = peer("bob")
        window = WindowClient(display, "--port", str(server.port), "--nick", "alice")
        window.wait_for(lambda s: s["status"] == "Connected as alice in lobby", "connected")
        bob.send("morning, alice!")
        wait_line(window, "morning, alice")
        window.say("hi bob! did the deploy go out?")
        wait_line(window, "<alice> hi bob")
        bob.send("yes, ten minutes ago. No errors so far.")
        carol = peer("carol")
        carol.send("/me brings coffee")
        wait_line(window, "brings coffee")
        bob.send("/msg alice can you review my branch after lunch?")
        wait_line(window, "review my branch")
        window.say("/msg bob sure, after lunch")
        wait_line(window, "sure, after lunch")
        dave = peer("dave")
        dave.send("/nick dave_away")
        carol.send("the new client reconnects by itself when the server restarts, and "
                   "whatever you type meanwhile is queued and sent once it is back")
        wait_line(window, "reconnects by itself")
        window.say("/me waves at carol")
        wait_line(window, "waves at carol")
        window.call("type", text="see you at the standup")
        time.sleep(0.5)
        window.call("screenshot", path=out)
        print(f"wrote {out}")
    finally:
        for c in clients:
            c.close()
        if window is not None:
            window.close()
        server.stop()
        xvfb.stop()


if __name__ == "__main__":
    main(sys.argv)
