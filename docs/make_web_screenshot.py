"""Regenerate docs/web-screenshot.png: a real session of the web client.

Run from a checkout with the package and its test extra installed (and
Debian's chromium)::

    python docs/make_web_screenshot.py [OUTPUT.png]

It starts a real ``twistd chat --web`` on loopback ports, a headless
Chromium through tests/browser.py (the driver the browser tests use) and a
few scripted line-protocol clients, holds a short conversation in two rooms,
and saves a PNG of the page.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.browser import Browser, unavailable  # noqa: E402
from tests.support import ChatServer  # noqa: E402
from tests.web_support import web_port  # noqa: E402


def main(argv):
    out = os.path.abspath(argv[1] if len(argv) > 1 else os.path.join(ROOT, "docs",
                                                                    "web-screenshot.png"))
    why = unavailable()
    if why:
        sys.exit(why)
    server = ChatServer("--db", ":memory:", "--web", "tcp:0:interface=127.0.0.1",
                        "--motd", "Welcome to the team chat. Be kind; /help lists commands.")
    server.start()
    clients = []
    browser = None
    try:
        url = f"http://127.0.0.1:{web_port(server)}/"
        browser = Browser((1100, 640))

        def line(nick):
            c = server.client()
            clients.append(c)
            c.json_mode(nick)
            return c

        def session():
            page = browser.page(url)
            page.get_by_label("Nick").fill("alice")
            page.get_by_role("button", name="Connect").click()
            message = page.get_by_role("textbox", name="Message", exact=True)
            message.wait_for()
            bob, carol = line("bob"), line("carol")

            def say(text):
                message.fill(text)
                page.get_by_role("button", name="Send", exact=True).click()

            say("/join dev")
            page.get_by_text("you joined #dev").wait_for()
            for c in (bob, carol):
                c.send("/join dev")
                c.expect_event("names", room="dev")
            say("/topic dev Release 2.4 on Friday: https://example.org/release")
            bob.send("/say dev morning! the build is green again")
            carol.send("/say dev nice. alice, can you look at the docs PR?")
            page.get_by_text("docs PR").wait_for()
            say("sure, after lunch")
            say("/me brings coffee")
            bob.send("/say lobby anyone up for lunch at 12?")
            bob.send("/msg alice are you coming to the demo?")
            bob.send("/ping done")
            bob.expect_event("pong")
            page.get_by_text("brings coffee").wait_for()
            page.wait_for_timeout(300)  # the unread badges settle
            page.screenshot(path=out)

        browser.run(session)
    finally:
        for c in clients:
            c.close()
        if browser is not None:
            browser.close()
        server.stop()
    print(out)


if __name__ == "__main__":
    main(sys.argv)
