"""Regenerate docs/screenshot.png: a real session of the desktop client under Xvfb.

Run from a checkout with the package and its test extra installed (and
Debian's xvfb and imagemagick)::

    python docs/make_screenshot.py [OUTPUT.png]

It starts a private Xvfb, a real ``twistd chat`` on a loopback port, the
real client window (through tests/tk_driver.py, the same driver the window
tests use) and a few scripted socket clients, holds a short conversation in
two rooms (a topic, an operator and a voiced member, unread lines and a
mention in the other room, a private conversation), and saves a PNG of the
window.
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
        # A second room: alice, its first member, is its operator; she sets its topic.
        window.say("/join dev")
        window.wait_for(lambda s: s["room"] == "#dev", "dev shown")
        window.say("/topic dev Release 2.0 on Friday: freeze Thursday noon")
        window.wait_for(lambda s: s["topic"].startswith("Release 2.0"), "the topic")
        bob.send("/join dev")
        carol = peer("carol")
        carol.send("/join dev")
        window.wait_for(lambda s: len(s["members"]) == 3, "three in dev")
        window.say("/voice dev bob")
        window.say("hi both! did the deploy go out?")
        wait_line(window, "<alice> hi both")
        bob.send("/say dev yes, ten minutes ago. No errors so far.")
        carol.send("/describe dev brings coffee")
        wait_line(window, "brings coffee")
        carol.send("/say dev the client keeps every room now: the list on the left counts "
                   "what you missed and marks where you were named")
        wait_line(window, "the client keeps every room")
        # Meanwhile, elsewhere: unread lines in the lobby (one names alice), and a
        # private conversation.
        dave = peer("dave")
        dave.send("anyone up for lunch?", "alice: you too?")
        bob.send("/msg alice can you review my branch after lunch?")
        window.wait_for(lambda s: s["conversations"] == ["#lobby (2) !", "#dev", "*bob* (1) !"],
                        "the lobby's unread lines and bob's private conversation")
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
