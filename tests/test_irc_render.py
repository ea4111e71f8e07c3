"""Hub events rendered as IRC lines (twisted_chat.faces.irc.render)."""

from twisted.trial.unittest import SynchronousTestCase

from twisted_chat.events import Event
from twisted_chat.faces.irc import message
from twisted_chat.faces.irc.render import (Context, Renderer, SharedCache, isupport_lines,
                                           render_event)

T = 1_700_000_000.25


def timed(type, **fields):
    return Event.timed(type, T, **fields)


class RenderTests(SynchronousTestCase):
    def setUp(self):
        self.r = Renderer("chat.example")
        self.ctx = Context("me")
        self.cache = SharedCache()

    def lines(self, event, ctx=None):
        return render_event(self.r, self.cache, event, ctx or self.ctx)

    def test_message_and_action(self):
        e = timed("message", id=7, ts=None, room="dev", nick="bob", text="hi there")
        self.assertEqual(self.lines(e), [":bob!bob@chat.example PRIVMSG #dev :hi there"])
        e = timed("message", id=8, ts=None, room="dev", nick="bob", text="waves", action=True)
        self.assertEqual(self.lines(e),
                         [":bob!bob@chat.example PRIVMSG #dev :\x01ACTION waves\x01"])

    def test_tags_by_capability(self):
        e = timed("message", id=7, ts=None, room="dev", nick="bob", text="hi")
        ctx = Context("me", {"server-time", "message-tags"})
        self.assertEqual(self.lines(e, ctx), [
            "@time=2023-11-14T22:13:20.250Z;msgid=7 :bob!bob@chat.example PRIVMSG #dev hi"])
        # account-tag: the account the event says the sender had when it
        # spoke (the hub's private _account), not whoever holds the nick now.
        self.r.account_of = {"bob": "somebody-else"}.get
        self.assertEqual(self.lines(e, Context("me", {"account-tag"})), [
            ":bob!bob@chat.example PRIVMSG #dev hi"])
        logged_in = timed("message", id=8, ts=None, room="dev", nick="bob", text="hi",
                          _account="bob")
        self.assertEqual(self.lines(logged_in, Context("me", {"account-tag"})), [
            "@account=bob :bob!bob@chat.example PRIVMSG #dev hi"])
        self.assertEqual(self.lines(e, Context("x", {"server-time"})), [
            "@time=2023-11-14T22:13:20.250Z :bob!bob@chat.example PRIVMSG #dev hi"])
        # The plain variant is still the plain one (the cache keys by variant).
        self.assertEqual(self.lines(e), [":bob!bob@chat.example PRIVMSG #dev hi"])

    def test_history_without_server_time_says_when(self):
        e = timed("message", id=7, ts=None, room="dev", nick="bob", text="old", history=True)
        (line,) = self.lines(e)
        self.assertTrue(line.endswith(":[2023-11-14 22:13] old"), line)

    def test_long_message_is_split_within_512_bytes(self):
        text = "word " * 400 + "é" * 500
        e = timed("message", id=7, ts=None, room="dev", nick="bob", text=text)
        lines = self.lines(e, Context("me", {"message-tags"}))
        self.assertGreater(len(lines), 4)
        self.assertIn("msgid=7", lines[0])
        self.assertNotIn("msgid", lines[1])
        for line in lines:
            body = message.split_tags(line.encode())[1]
            self.assertLessEqual(len(body), 510)
        said = "".join(message.parse(line).params[1] for line in lines)
        self.assertEqual(said.replace(" ", ""), text.replace(" ", ""))

    def test_crlf_in_text_cannot_inject(self):
        e = timed("message", id=7, ts=None, room="dev", nick="bob",
                  text="x\r\n:srv 001 me :owned\r\nQUIT\0")
        for ctx in (self.ctx, Context("me", {"server-time", "message-tags"})):
            (line,) = self.lines(e, ctx)
            self.assertNotIn("\r", line)
            self.assertNotIn("\n", line)
            self.assertNotIn("\0", line)

    def test_membership_events(self):
        self.assertEqual(self.lines(timed("join", room="dev", nick="bob")),
                         [":bob!bob@chat.example JOIN #dev"])
        self.assertEqual(self.lines(timed("join", room="dev", nick="bob"),
                                    Context("me", {"extended-join"})),
                         [":bob!bob@chat.example JOIN #dev * bob"])
        self.assertEqual(self.lines(timed("part", room="dev", nick="bob", reason="left")),
                         [":bob!bob@chat.example PART #dev"])
        self.assertEqual(self.lines(timed("part", room="dev", nick="bob",
                                          reason="left: see you")),
                         [":bob!bob@chat.example PART #dev :see you"])
        self.assertEqual(self.lines(timed("quit", nick="bob", reason="quit: lunch")),
                         [":bob!bob@chat.example QUIT :Quit: lunch"])
        self.assertEqual(self.lines(timed("quit", nick="bob", reason="disconnected")),
                         [":bob!bob@chat.example QUIT Disconnected"])
        self.assertEqual(self.lines(timed("nick", old="bob", new="rob")),
                         [":bob!bob@chat.example NICK rob"])
        self.assertEqual(self.lines(timed("kick", room="dev", nick="bob", by="al",
                                          reason="spam")),
                         [":al!al@chat.example KICK #dev bob spam"])

    def test_modes(self):
        def mode(**f):
            (line,) = self.lines(timed("mode", room="dev", by="al", **f))
            return line.split(" ", 1)[1]

        self.assertEqual(mode(mode="op", on=True, nick="bob"), "MODE #dev +o bob")
        self.assertEqual(mode(mode="voice", on=False, nick="bob"), "MODE #dev -v bob")
        self.assertEqual(mode(mode="ban", on=True, nick="bob"), "MODE #dev +b bob!*@*")
        self.assertEqual(mode(mode="moderated", on=True), "MODE #dev +m")
        self.assertEqual(mode(mode="topic-lock", on=False), "MODE #dev -t")
        self.assertEqual(mode(mode="invite-only", on=True), "MODE #dev +i")
        self.assertEqual(mode(mode="key", on=True), "MODE #dev +k *")
        self.assertEqual(mode(mode="limit", on=True, value=10), "MODE #dev +l 10")
        self.assertEqual(mode(mode="limit", on=False), "MODE #dev -l")

    def test_names_with_prefixes(self):
        e = Event("names", {"room": "dev", "nicks": ["al", "bob", "cy"], "ops": ["al"],
                            "voiced": ["al", "bob"]})
        self.assertEqual(self.lines(e), [
            ":chat.example 353 me = #dev :@al +bob cy",
            ":chat.example 366 me #dev :End of /NAMES list"])
        multi = Context("me", {"multi-prefix"})
        self.assertEqual(self.lines(e, multi)[0], ":chat.example 353 me = #dev :@+al +bob cy")

    def test_names_split_over_lines(self):
        nicks = [f"user{i:04d}" for i in range(300)]
        lines = self.lines(Event("names", {"room": "dev", "nicks": nicks, "ops": [],
                                           "voiced": []}))
        self.assertGreater(len(lines), 3)
        got = []
        for line in lines[:-1]:
            self.assertLessEqual(len(line.encode()), 510)
            got += message.parse(line).params[-1].split()
        self.assertEqual(got, nicks)

    def test_names_as_one_build_a_word_would_make_them(self):
        # The reply is made from the nicks' list in bulk (a joiner of a room
        # of 10,000 gets it); it must be what the plain way makes: each
        # word prefixed, as many words a line as fit in 510 bytes, build()
        # for each line.
        def plain(nicks, ops, voiced, caps, me="me"):
            words = []
            for nick in nicks:
                prefix = "@" if nick in ops else ""
                if nick in voiced and ("multi-prefix" in caps or not prefix):
                    prefix += "+"
                words.append(prefix + (self.r.source(nick) if "userhost-in-names" in caps
                                       else nick))
            room = 510 - len(f":chat.example 353 {me} = #dev :".encode())
            chunks, current = [], []
            for w in words:
                if current and len(" ".join(current + [w]).encode()) > room:
                    chunks.append(" ".join(current))
                    current = []
                current.append(w)
            if current:
                chunks.append(" ".join(current))
            return [message.build("353", [me, "=", "#dev", c], "chat.example") for c in chunks]

        nicks = [f"u{i}" + "x" * (i % 23) for i in range(2000)]
        accented = [w + str(i) for i in range(40) for w in ("zoë", "Ærøskøbing", "名前")]
        accented += nicks[:300]
        cases = [
            (nicks, [], []),
            (nicks, ["u7xxxxxxx", "u1999" + "x" * (1999 % 23)], ["u3xxx", "u7xxxxxxx"]),
            (nicks, nicks[::50], nicks[::7]),  # many prefixed (more than 16)
            (accented, ["zoë3"], ["名前3", "zoë3"]),
            (["solo"], ["solo"], []),
            (["gone-from-names"][:0], ["al"], []),
        ]
        for caps in (set(), {"multi-prefix"}, {"userhost-in-names", "multi-prefix"}):
            for nicks_, ops, voiced in cases:
                e = Event("names", {"room": "dev", "nicks": nicks_, "ops": ops,
                                    "voiced": voiced})
                got = self.lines(e, Context("me", caps))
                self.assertEqual(got[:-1], plain(nicks_, set(ops), set(voiced), caps))
                self.assertEqual(got[-1], ":chat.example 366 me #dev :End of /NAMES list")
                for line in got:
                    self.assertLessEqual(len(line.encode()), 510)

    def test_topic_after_names_is_a_reply_otherwise_a_change(self):
        names = Event("names", {"room": "dev", "nicks": ["me"], "ops": [], "voiced": []})
        topic = timed("topic", room="dev", topic="plans", by="al")
        self.lines(names)  # names alone (NAMES): a topic after it is a change
        self.assertEqual(self.lines(topic), [":al!al@chat.example TOPIC #dev plans"])
        self.lines(timed("join", room="dev", nick="me"))
        self.lines(names)
        self.assertEqual(self.lines(topic), [
            ":chat.example 332 me #dev plans",
            ":chat.example 333 me #dev al 1700000000"])
        self.assertEqual(self.lines(topic), [":al!al@chat.example TOPIC #dev plans"])
        cleared = timed("topic", room="dev", topic="", by="al")
        self.assertEqual(self.lines(cleared), [":al!al@chat.example TOPIC #dev :"])

    def test_direct_events(self):
        self.assertEqual(self.lines(timed("invite", room="dev", by="al")),
                         [":al!al@chat.example INVITE me #dev"])
        flags = Event("flags", {"room": "dev", "topic-lock": True, "moderated": False,
                                "invite-only": True, "key": "sesame", "limit": 5})
        self.assertEqual(self.lines(flags), [":chat.example 324 me #dev +ntikl sesame 5"])
        flags.fields["key"] = True
        self.assertEqual(self.lines(Event("flags", dict(flags.fields))),
                         [":chat.example 324 me #dev +ntikl * 5"])
        self.assertEqual(self.lines(Event("pong", {"token": "abc"})),
                         [":chat.example PONG chat.example abc"])
        self.assertEqual(self.lines(Event("bye", {"reason": "goodbye"})),
                         ["ERROR :Closing link: goodbye"])
        self.assertEqual(self.lines(Event("error", {"code": "not-stored", "message": "x"})),
                         [":chat.example NOTICE me :not-stored: x"])
        self.assertEqual(self.lines(Event("welcome", {"nick": "me"})), [])

    def test_rooms_and_bans(self):
        rooms = Event("rooms", {"rooms": [{"name": "dev", "members": 2, "topic": "t"}]})
        self.assertEqual(self.lines(rooms), [
            ":chat.example 321 me Channel :Users  Name",
            ":chat.example 322 me #dev 2 t",
            ":chat.example 323 me :End of /LIST"])
        bans = Event("bans", {"room": "dev", "bans": [
            {"entry": "account:bob", "nick": "bob", "by": "al",
             "ts": "2023-11-14T22:13:20.000Z"}]})
        self.assertEqual(self.lines(bans), [
            ":chat.example 367 me #dev account:bob al 1700000000",
            ":chat.example 368 me #dev :End of channel ban list"])

    def test_shared_lines_rendered_once_per_variant(self):
        calls = []
        shared = self.r.shared
        self.r.shared = lambda e, v: calls.append(v) or shared(e, v)
        e = timed("join", room="dev", nick="bob")
        for nick in ("a", "b", "c"):
            self.lines(e, Context(nick))
        self.lines(e, Context("d", {"server-time"}))
        self.assertEqual(len(calls), 2)

    def test_isupport_at_most_13_per_line(self):
        groups = isupport_lines([f"T{i}" for i in range(30)])
        self.assertEqual([len(g) for g in groups], [13, 13, 4])
