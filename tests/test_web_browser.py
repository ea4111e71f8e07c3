"""The web client in a real headless Chromium (tests/browser.py) against a
real ``twistd chat --web``: sign-in, chat with a line-protocol client, text
that is never HTML, the Origin check, reconnecting after a server restart,
history paging, the phone layout, notifications while the tab is hidden
and the colour scheme.

Skipped, saying why, where Playwright or Chromium is missing.
"""

import http.server
import re
import shutil
import socket
import tempfile
import threading
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .browser import Browser, unavailable
from .support import ChatServer
from .web_support import web_port

LOOPBACK = "tcp:0:interface=127.0.0.1"
XSS = "<img src=x onerror=alert(1)>"


def sign_in(page, nick, password=None):
    page.get_by_label("Nick").fill(nick)
    if password:
        page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Connect").click()
    page.get_by_role("textbox", name="Message", exact=True).wait_for()


def say(page, text):
    page.get_by_role("textbox", name="Message", exact=True).fill(text)
    page.get_by_role("button", name="Send", exact=True).click()


def log(page):
    return page.get_by_role("log")


def wait_line(page, text):
    """The log line holding ``text`` once it is shown."""
    line = log(page).locator(".line", has_text=text)
    line.first.wait_for()
    return line


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BrowserTestCase(SynchronousTestCase):
    server_args = ()
    viewport = (1100, 700)

    def setUp(self):
        why = unavailable()
        if why:
            raise SkipTest(why)
        self.server = self.start_server()
        self.browser = Browser(self.viewport)
        self.addCleanup(self.browser.close)

    def start_server(self, *args, directory=None):
        server = ChatServer("--db", ":memory:", "--web", LOOPBACK, *self.server_args, *args,
                            directory=directory).start()
        self.addCleanup(server.stop)
        self.url = f"http://127.0.0.1:{web_port(server)}/"
        return server

    def run_in_browser(self, scenario, expected=None):
        """Run ``scenario``; any error the page logged fails the test, but for
        those matching the regular expression ``expected``."""
        self.browser.run(scenario)
        errors = [e for e in self.browser.errors if not (expected and re.search(expected, e))]
        self.assertEqual(errors, [], "JavaScript errors in the page")


class SafetyTests(BrowserTestCase):
    def test_markup_shows_as_text_and_links_are_safe(self):
        def scenario():
            page = self.browser.page(self.url)
            dialogs = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            sign_in(page, "alice")
            bob = self.server.line("bob")
            wait_line(page, "bob joined")
            bob.send(XSS, "<script>alert(2)</script><b>bold</b>",
                      "see javascript:alert(3) and https://example.org/a?b=<i>c</i>.")
            wait_line(page, "https://example.org")
            texts = log(page).locator(".line.msg .text").all_text_contents()
            self.assertEqual(texts[:2], [XSS, "<script>alert(2)</script><b>bold</b>"])
            self.assertEqual(log(page).locator("img, script, b, i").count(), 0)
            links = log(page).locator("a")
            self.assertEqual(links.count(), 1)
            # A URL ends at a character that may not appear in one unquoted.
            self.assertEqual(links.get_attribute("href"), "https://example.org/a?b=")
            self.assertEqual(texts[2], "see javascript:alert(3) and https://example.org/a?b=<i>c</i>.")
            self.assertEqual(links.get_attribute("rel"), "noopener noreferrer nofollow")
            # A round trip after the markup: had an <img> been made, its
            # onerror would have run by now.
            say(page, "/ping done")
            wait_line(page, "pong done")
            self.assertEqual(dialogs, [])

        self.run_in_browser(scenario)

    def test_other_origin_refused(self):
        port = web_port(self.server)
        # Another site's page (another port is another origin) opens the
        # chat's WebSocket: the browser names its origin, the server refuses.
        html = ("<!doctype html><title>start</title><script>"
                f"const ws = new WebSocket('ws://127.0.0.1:{port}/ws');"
                "ws.onopen = () => { document.title = 'opened'; };"
                "ws.onclose = (e) => { document.title = 'closed ' + e.code; };"
                "</script>").encode()
        other = _serve_page(html)
        self.addCleanup(other.server_close)
        self.addCleanup(other.shutdown)

        def scenario():
            page = self.browser.page(f"http://127.0.0.1:{other.server_address[1]}/")
            page.wait_for_function("document.title.startsWith('closed') || "
                                   "document.title === 'opened'")
            self.assertEqual(page.title(), "closed 1006")  # the handshake failed

        self.browser.run(scenario)
        self.server.wait_for_log(
            rf"refused: origin 'http://127.0.0.1:{other.server_address[1]}'")


def _serve_page(body):
    """An HTTP server on another loopback port serving ``body`` at every
    path, in a thread of the test process."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    # Threads: Chromium may open a connection it sends nothing on (a
    # preconnect), which would hold a one-at-a-time server from the page.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class ChatTests(BrowserTestCase):
    server_args = ("--motd", "Be kind.")

    def test_page_and_line_client_chat(self):
        def scenario():
            page = self.browser.page(self.url)
            sign_in(page, "alice")
            wait_line(page, "Be kind.")  # the welcome's, before any room
            bob = self.server.line("bob")
            wait_line(page, "bob joined")
            members = page.get_by_role("complementary", name="Members")
            members.get_by_text("bob", exact=True).wait_for()
            say(page, "hello bob")
            self.assertEqual(bob.expect_event("message", nick="alice")["text"], "hello bob")
            say(page, "/me waves")
            self.assertTrue(bob.expect_event("message", nick="alice").get("action"))
            wait_line(page, "waves")
            self.assertEqual(log(page).locator(".line.action").count(), 1)
            bob.send("/msg alice psst")
            rooms = page.get_by_role("navigation", name="Rooms")
            entry = rooms.get_by_role("button", name=re.compile(r"^bob"))
            entry.wait_for()
            self.assertIn("1 unread", entry.inner_html())
            entry.click()
            wait_line(page, "psst")
            say(page, "hi privately")
            self.assertEqual(bob.expect_event("private", **{"from": "alice"})["text"],
                             "hi privately")
            # Times are local HH:MM.
            stamp = log(page).locator(".line time").first.inner_text()
            self.assertRegex(stamp, r"^\d\d:\d\d$")

        self.run_in_browser(scenario)


class RoomsTests(BrowserTestCase):
    def test_two_pages_and_a_line_client_in_two_rooms(self):
        def scenario():
            alice = self.browser.page(self.url)
            sign_in(alice, "alice")
            bob = self.browser.page(self.url)
            sign_in(bob, "bob")
            carol = self.server.line("carol")
            alice_rooms = alice.get_by_role("navigation", name="Rooms")
            # alice opens dev from the room list's form: she is its first
            # member, so its operator.
            alice.get_by_label("Join a room").fill("dev")
            alice_rooms.get_by_role("button", name="Join", exact=True).click()
            wait_line(alice, "you joined #dev")
            say(bob, "/join dev")
            wait_line(alice, "bob joined")
            carol.send("/join dev")
            carol.expect_event("names", room="dev")
            members = alice.get_by_role("complementary", name="Members")
            members.get_by_text("carol", exact=True).wait_for()
            self.assertEqual(members.locator("li.op").all_inner_texts(), ["alice"])
            # bob shows dev (his last join): his line goes there.
            say(bob, "hello dev")
            self.assertEqual(carol.expect_event("message", nick="bob", text="hello dev")["room"],
                             "dev")
            wait_line(alice, "hello dev")
            # carol speaks in lobby while alice shows dev: lobby counts it,
            # with a mention mark, and the title says so.
            carol.send("/say lobby lunch, alice?")
            lobby = alice_rooms.get_by_role("button", name=re.compile(r"^#lobby"))
            lobby.locator(".unread", has_text="1").wait_for()
            self.assertEqual(lobby.locator(".mention").count(), 1)
            self.assertEqual(alice.title(), "(1) twisted-chat")
            self.assertEqual(log(alice).get_by_text("lunch, alice?").count(), 0)
            lobby.click()
            wait_line(alice, "lunch, alice?")
            self.assertEqual(alice.locator(".unread-marker").count(), 1)
            self.assertEqual(alice.title(), "twisted-chat")
            say(alice, "yes, at noon")
            self.assertEqual(carol.expect_event("message", nick="alice", text="yes, at noon")
                             ["room"], "lobby")
            # bob shows dev: both lobby lines are unread for him.
            bob_rooms = bob.get_by_role("navigation", name="Rooms")
            bob_rooms.get_by_role("button", name=re.compile(r"^#lobby")).locator(
                ".unread", has_text="2").wait_for()
            # The operator sets dev's topic: bob's topic bar shows it.
            say(alice, "/topic dev Release on Friday")
            bob.locator("#topic", has_text="Release on Friday").wait_for()
            wait_line(bob, "topic: Release on Friday (set by alice)")
            # bob leaves dev from his room list; alice's member list follows.
            bob_rooms.get_by_role("button", name="Leave #dev").click()
            alice_rooms.get_by_role("button", name=re.compile(r"^#dev")).click()
            members.get_by_text("bob", exact=True).wait_for(state="detached")
            self.assertEqual(bob_rooms.get_by_role("button", name=re.compile(r"^#dev")).count(), 0)

        self.run_in_browser(scenario)


class HistoryTests(BrowserTestCase):
    server_args = ("--history", "5")

    def test_scrolling_up_loads_older_pages_each_message_once(self):
        bob = self.server.line("bob")
        for i in range(1, 13):
            bob.send(f"m{i}")
        bob.send("/ping stored")
        bob.expect_event("pong")

        def scenario():
            page = self.browser.page(self.url)
            sign_in(page, "alice")
            wait_line(page, "m12")
            log(page).evaluate("(log) => { log.scrollTop = 0; "
                               "log.dispatchEvent(new Event('scroll')); }")
            wait_line(page, "m1")
            page.get_by_text("beginning of the history").wait_for()
            texts = log(page).locator(".line.msg .text").all_text_contents()
            self.assertEqual(texts, [f"m{i}" for i in range(1, 13)])

        self.run_in_browser(scenario)


class ReconnectTests(BrowserTestCase):
    def setUp(self):
        why = unavailable()
        if why:
            raise SkipTest(why)
        self.dir = tempfile.mkdtemp(prefix="chat-web-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.port = free_port()
        self.server = self.start_server()
        self.browser = Browser(self.viewport)
        self.addCleanup(self.browser.close)

    def start_server(self):
        server = ChatServer("--db", "chat.sqlite", "--web", f"tcp:{self.port}:interface=127.0.0.1",
                            directory=self.dir).start()
        self.addCleanup(server.stop)
        self.url = f"http://127.0.0.1:{self.port}/"
        return server

    def test_reconnect_after_server_restart_shows_no_message_twice(self):
        def scenario():
            page = self.browser.page(self.url)
            sign_in(page, "alice")
            bob = self.server.line("bob")
            bob.send("before the restart")
            wait_line(page, "before the restart")
            say(page, "mine, before")
            wait_line(page, "mine, before")
            self.server.stop()
            page.get_by_text(re.compile("reconnecting")).wait_for()
            self.server = self.start_server()
            carol = self.server.line("carol")
            carol.send("while you were away")
            # The page retries with a growing delay (up to 30 s between tries).
            log(page).locator(".line", has_text="while you were away").wait_for(timeout=60_000)
            page.get_by_role("complementary", name="Members").get_by_text(
                "carol", exact=True).wait_for()
            say(page, "back again")
            self.assertNotIn("history", carol.expect_event("message", nick="alice",
                                                           text="back again"))
            wait_line(page, "back again")
            texts = log(page).locator(".line.msg .text").all_text_contents()
            for text in ("before the restart", "mine, before", "while you were away",
                         "back again"):
                self.assertEqual(texts.count(text), 1, texts)

        # Chromium logs each try that finds the server still down (a slow
        # restart) as a console error of its own: that is what is tested.
        self.run_in_browser(
            scenario, expected=r"^WebSocket connection to 'ws://[^']+/ws' failed: "
                               r".*net::ERR_CONNECTION_REFUSED$")


class PhoneTests(BrowserTestCase):
    viewport = (360, 740)

    def test_layout_at_360_px(self):
        def scenario():
            page = self.browser.page(self.url)
            sign_in(page, "alice")
            bob = self.server.line("bob")
            wait_line(page, "bob joined")
            bob.send("a long line " + "word " * 60)
            wait_line(page, "a long line")
            width = page.evaluate("document.documentElement.scrollWidth")
            self.assertLessEqual(width, 360)
            for control in (page.get_by_role("textbox", name="Message", exact=True),
                            page.get_by_role("button", name="Send", exact=True)):
                box = control.bounding_box()
                self.assertGreaterEqual(box["x"], 0)
                self.assertLessEqual(box["x"] + box["width"], 360)
                self.assertLessEqual(box["y"] + box["height"], 740)
            rooms = page.get_by_role("navigation", name="Rooms")
            self.assertFalse(rooms.is_visible())  # a drawer on a phone
            page.get_by_role("button", name="Show rooms").click()
            lobby = rooms.get_by_role("button", name=re.compile("^#lobby"))
            lobby.wait_for()
            lobby.click()
            rooms.wait_for(state="hidden")
            say(page, "from my phone")
            self.assertEqual(bob.expect_event("message", nick="alice")["text"], "from my phone")

        self.run_in_browser(scenario)


# Chromium shows no notification headless and a test cannot hide a tab: the
# page's own view of both is replaced before its script runs, so what is
# checked is what the page asks of the browser.
FAKE_HIDDEN_TAB = """
window.__notes = [];
window.__hidden = false;
for (const [name, get] of [["hidden", () => window.__hidden],
                           ["visibilityState", () => window.__hidden ? "hidden" : "visible"]]) {
  Object.defineProperty(Document.prototype, name, {get, configurable: true});
}
window.__setHidden = (hidden) => {
  window.__hidden = hidden;
  document.dispatchEvent(new Event("visibilitychange"));
};
window.Notification = class {
  constructor(title, options) {
    window.__notes.push({title, body: (options || {}).body});
  }
  close() {}
  static get permission() { return "granted"; }
  static requestPermission() { return Promise.resolve("granted"); }
};
"""


def wait_true(page, expression, timeout=15):
    """Poll ``expression`` in the page until it is true (wait_for_function
    would evaluate a string, which the page's CSP forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} s: {expression}")
        page.wait_for_timeout(50)


class NotificationTests(BrowserTestCase):
    def test_mention_and_private_message_notify_while_hidden(self):
        def scenario():
            page = self.browser.page()
            page.add_init_script(FAKE_HIDDEN_TAB)
            page.goto(self.url)
            sign_in(page, "alice")
            bob = self.server.line("bob")
            wait_line(page, "bob joined")
            bob.send("visible, naming alice")  # the tab is shown: no notification
            wait_line(page, "visible, naming alice")
            page.evaluate("window.__setHidden(true)")
            bob.send("nobody in particular")
            bob.send("alice: are you there?")
            bob.send("/msg alice psst")
            wait_true(page, "window.__notes.length >= 2")
            wait_line(page, "nobody in particular")
            notes = page.evaluate("window.__notes")
            self.assertEqual(notes, [{"title": "bob in #lobby", "body": "alice: are you there?"},
                                     {"title": "bob", "body": "psst"}])
            # The unread count in the tab's title: the two room lines and the
            # private one.
            self.assertTrue(page.title().startswith("(3) "), page.title())
            page.evaluate("window.__setHidden(false)")
            wait_true(page, "!document.title.startsWith('(3)')")
            self.assertEqual(len(page.evaluate("window.__notes")), 2)

        self.run_in_browser(scenario)


class ColourSchemeTests(BrowserTestCase):
    def test_light_and_dark_follow_the_system(self):
        def scenario():
            page = self.browser.page(self.url)
            backgrounds = {}
            for scheme in ("light", "dark"):
                page.emulate_media(color_scheme=scheme)
                backgrounds[scheme] = page.evaluate(
                    "getComputedStyle(document.body).backgroundColor")
            self.assertNotEqual(backgrounds["light"], backgrounds["dark"])
            # Dark means dark: the channel sum of its background is low.
            dark = [int(n) for n in re.findall(r"\d+", backgrounds["dark"])[:3]]
            self.assertLess(sum(dark), 3 * 100, backgrounds)

        self.run_in_browser(scenario)
