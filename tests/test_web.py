"""The web face without a browser: the page's HTTP answers and the WebSocket
session (a real ``twistd chat --web`` and a blocking WebSocket client), and
the framing against Autobahn's own."""

import json

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat import tap
from twisted_chat.web import frames

from .support import ChatServer
from .web_support import HandshakeRefused, WSClient, http_get, web_port

LOOPBACK = "tcp:0:interface=127.0.0.1"


class WebServerTestCase(SynchronousTestCase):
    server_args = ()

    def setUp(self):
        self.server = ChatServer("--db", ":memory:", "--web", LOOPBACK,
                                 *self.server_args).start()
        self.addCleanup(self.server.stop)
        self.port = web_port(self.server)

    def ws(self, nick=None, **kw):
        c = WSClient(self.port, **kw)
        self.addCleanup(c.close)
        self.assertEqual(c.event()["type"], "welcome")  # JSON from the start
        if nick is not None:
            c.send(f"/nick {nick}")
            c.expect_event("names")
        return c


class PageTests(WebServerTestCase):
    def test_page_and_its_files_with_security_headers(self):
        status, headers, body = http_get(self.port, "/")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/html; charset=utf-8")
        self.assertIn(b'src="app.js"', body)
        csp = headers["content-security-policy"]
        self.assertIn("script-src 'self'", csp)
        self.assertIn("frame-ancestors 'none'", csp)
        self.assertNotIn("unsafe-inline", csp)
        self.assertNotIn("unsafe-eval", csp)
        self.assertEqual(headers["x-content-type-options"], "nosniff")
        for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
            status, headers, body = http_get(self.port, "/" + name)
            self.assertEqual((status, headers["content-type"].split(";")[0]), (200, kind))
            self.assertTrue(body)
            self.assertEqual(headers["x-content-type-options"], "nosniff")

    def test_no_inline_script_or_style_in_the_page(self):
        _, _, body = http_get(self.port, "/")
        page = body.decode()
        self.assertNotRegex(page, r"<script(?![^>]*\bsrc=)[^>]*>")
        self.assertNotIn("<style", page)
        self.assertNotRegex(page, r"\son\w+=")  # no inline event handlers
        self.assertNotIn("style=", page)

    def test_unknown_path_is_404_with_the_headers(self):
        status, headers, _ = http_get(self.port, "/nope")
        self.assertEqual(status, 404)
        self.assertIn("frame-ancestors 'none'", headers["content-security-policy"])


class SessionTests(WebServerTestCase):
    def test_web_socket_and_line_client_chat(self):
        web = self.ws("alice")
        bob = self.server.line("bob")
        web.expect_event("join", nick="bob")
        bob.send("hi <b>alice</b>")
        self.assertEqual(web.expect_event("message", nick="bob")["text"], "hi <b>alice</b>")
        web.send("hi bob")
        self.assertEqual(bob.expect_event("message", nick="alice")["text"], "hi bob")
        echo = web.expect_event("message", nick="alice")  # the sender's own copy, with its id
        self.assertIsInstance(echo["id"], int)
        web.send("/msg bob psst")
        self.assertEqual(bob.expect_event("private")["text"], "psst")

    def test_each_frame_is_one_event(self):
        web = self.ws("alice")
        web.send("/help", "/ping x")
        while True:
            opcode, payload = web.frame()
            self.assertEqual(opcode, 0x1)
            event = json.loads(payload)  # one whole JSON object, no CRLF
            self.assertFalse(payload.endswith(b"\n"))
            if event["type"] == "pong":
                break

    def test_a_message_with_newlines_is_one_line(self):
        web = self.ws("alice")
        web.send("/nick bob\n/nick carol")  # never two commands
        self.assertEqual(web.expect_event("error")["code"], "usage")

    def test_line_too_long_keeps_the_connection(self):
        web = self.ws("alice")
        web.send("x" * 5000)
        self.assertEqual(web.expect_event("error")["code"], "line-too-long")
        web.send("/ping still")
        self.assertEqual(web.expect_event("pong")["token"], "still")

    def test_a_message_over_the_frame_bound_closes(self):
        web = self.ws("alice")
        web.send("x" * 9000)
        self.assertEqual(web.expect_close()[0], 1009)

    def test_binary_frames_are_refused(self):
        web = self.ws("alice")
        web.send_frame(0x2, b"\x00\x01")
        self.assertEqual(web.expect_close()[0], 1003)

    def test_rate_limited_like_the_line_face(self):
        web = self.ws("alice")
        for i in range(40):
            web.send(f"/ping {i}")
        self.assertEqual(web.expect_event("error")["code"], "rate-limited")

    def test_quit_says_bye_and_closes(self):
        web = self.ws("alice")
        bob = self.server.line("bob")
        web.send("/quit lunch")
        self.assertEqual(web.expect_event("bye")["reason"], "goodbye")
        self.assertEqual(web.expect_close()[0], 1000)
        bob.expect(lambda line: "alice" in line and "quit" in line)

    def test_server_shutdown_says_bye(self):
        web = self.ws("alice")
        web.send("/ping ready")
        web.expect_event("pong")
        self.server.stop()
        self.assertEqual(web.expect_event("bye")["reason"], "server shutting down")


class OriginTests(WebServerTestCase):
    server_args = ("--web-origin", "https://chat.example.org")

    def test_other_origin_refused(self):
        with self.assertRaises(HandshakeRefused) as caught:
            WSClient(self.port, origin="http://evil.example")
        self.assertEqual(caught.exception.status, 403)
        # The 403 can arrive before the log line is read from the server.
        self.server.wait_for_log(r"refused: origin 'http://evil.example'")

    def test_same_host_other_port_refused(self):
        with self.assertRaises(HandshakeRefused):
            WSClient(self.port, origin=f"http://127.0.0.1:{self.port + 1}")

    def test_own_and_listed_origins_and_none_accepted(self):
        for origin in ("self", "https://chat.example.org", "HTTPS://Chat.Example.org:443", None):
            c = self.ws(origin=origin)
            c.close()


class OptionsTests(SynchronousTestCase):
    def test_bad_web_origin(self):
        with self.assertRaises(usage.UsageError) as caught:
            tap.Options().parseOptions(["--web", "tcp:0", "--web-origin", "chat.example.org",
                                        "--db", ":memory:"])
        self.assertIn("--web-origin", str(caught.exception))

    def test_bad_web_endpoint(self):
        with self.assertRaises(usage.UsageError) as caught:
            tap.Options().parseOptions(["--web", "nonsense:1", "--db", ":memory:"])
        self.assertIn("bad --web", str(caught.exception))


class FramingTests(SynchronousTestCase):
    def test_frames_are_autobahns_prepared_frames(self):
        from autobahn.twisted.websocket import WebSocketServerFactory

        factory = WebSocketServerFactory()
        for n in (0, 1, 125, 126, 127, 65535, 65536, 70000):
            payload = ("é" * n).encode()[:n]
            prepared = factory.prepareMessage(payload, isBinary=False, doNotCompress=True)
            self.assertEqual(frames.frame(payload), prepared.payloadHybi, n)

    def test_lines_to_frames(self):
        self.assertEqual(frames.frame_lines(b'{"a":1}\r\n{"b":2}\r\n'),
                         frames.frame(b'{"a":1}') + frames.frame(b'{"b":2}'))
        self.assertEqual(frames.frame_lines(b"x\r\n"), frames.frame(b"x"))

    def test_cache_frames_a_shared_blob_once(self):
        cache = frames.FrameCache()
        blob = b'{"type":"message"}\r\n' * 3
        first = cache(blob)
        self.assertIs(cache(blob), first)  # the same object: not framed again
        other = bytes(bytearray(blob))  # equal bytes, another object
        self.assertIsNot(cache(other), first)
        self.assertEqual(cache(other), first)
