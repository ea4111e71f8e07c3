"""The IRC line parser and builder (twisted_chat.faces.irc.message), with a
property test: any text parses or is refused cleanly, and nothing a builder
is given can put CR, LF or NUL into a line."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat.faces.irc import message
from twisted_chat.faces.irc.message import BadMessage, LineTooLong, Message


class ParseTests(SynchronousTestCase):
    def test_command_and_params(self):
        self.assertEqual(message.parse("privmsg #dev :hello there"),
                         Message("PRIVMSG", ["#dev", "hello there"], {}, None))

    def test_tags_and_source(self):
        msg = message.parse("@time=2026-01-01T00:00:00.000Z;+draft/x=a\\sb\\:c;flag "
                            ":alice!a@h PRIVMSG #dev :hi")
        self.assertEqual(msg.tags, {"time": "2026-01-01T00:00:00.000Z",
                                    "+draft/x": "a b;c", "flag": ""})
        self.assertEqual(msg.source, "alice!a@h")
        self.assertEqual(msg.params, ["#dev", "hi"])

    def test_trailing_keeps_colons_and_spaces(self):
        self.assertEqual(message.parse("PRIVMSG #a :: x  :y ").params, ["#a", ": x  :y "])

    def test_empty_trailing(self):
        self.assertEqual(message.parse("TOPIC #a :").params, ["#a", ""])

    def test_extra_spaces_between_params(self):
        self.assertEqual(message.parse("  USER  u   0  *  :Real Name").params,
                         ["u", "0", "*", "Real Name"])

    def test_no_command(self):
        for line in ("", "   ", "@a=b", ":src", "@a=b :src  "):
            self.assertRaises(BadMessage, message.parse, line)

    def test_numeric_command_kept(self):
        self.assertEqual(message.parse(":srv 001 me :Welcome").command, "001")

    def test_tag_unescape(self):
        self.assertEqual(message.unescape_tag("a\\\\b\\r\\n\\q\\"), "a\\b\r\nq")


class LengthTests(SynchronousTestCase):
    def test_body_limit(self):
        message.check_length(b"PRIVMSG #a :" + b"x" * (510 - 12))
        self.assertRaises(LineTooLong, message.check_length, b"PRIVMSG #a :" + b"x" * 499)

    def test_tags_do_not_count_against_the_body(self):
        tags = b"@+x=" + b"y" * 4000
        message.check_length(tags + b" PRIVMSG #a :" + b"x" * 498)

    def test_tag_limit(self):
        self.assertRaises(LineTooLong, message.check_length,
                          b"@+x=" + b"y" * 4091 + b" PING x")


class BuildTests(SynchronousTestCase):
    def test_trailing_gets_a_colon_when_needed(self):
        self.assertEqual(message.build("PRIVMSG", ["#a", "hi"]), "PRIVMSG #a hi")
        self.assertEqual(message.build("PRIVMSG", ["#a", "hi there"]), "PRIVMSG #a :hi there")
        self.assertEqual(message.build("PRIVMSG", ["#a", ":)"]), "PRIVMSG #a ::)")
        self.assertEqual(message.build("TOPIC", ["#a", ""]), "TOPIC #a :")

    def test_crlf_nul_never_pass(self):
        line = message.build("PRIVMSG", ["#a\r\nQUIT", "x\r\n:evil 001 y\0z"],
                             source="n\r\n!u@h", tags={"k\n": "v\r\n"})
        self.assertNotIn("\r", line)
        self.assertNotIn("\n", line)
        self.assertNotIn("\0", line)
        self.assertEqual(message.parse(line).command, "PRIVMSG")

    def test_middle_params_stay_one_word(self):
        self.assertEqual(message.build("KICK", ["#a b", ":x", "why"]), "KICK #ab x why")

    def test_tags_escaped(self):
        line = message.build("TAGMSG", ["#a"], tags={"msgid": "1", "time": "a b;c\\"})
        self.assertEqual(line, "@msgid=1;time=a\\sb\\:c\\\\ TAGMSG #a")
        self.assertEqual(message.parse(line).tags, {"msgid": "1", "time": "a b;c\\"})

    def test_split_text_respects_utf8_and_size(self):
        text = "ab " * 200 + "é" * 300
        pieces = message.split_text(text, 100)
        for p in pieces:
            self.assertLessEqual(len(p.encode("utf-8")), 100)
        self.assertEqual("".join(pieces).replace(" ", ""), text.replace(" ", ""))


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)


class FuzzTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=600))
    def test_any_bytes(self, data):
        """Random bytes: the length check and the parser raise only their own errors."""
        try:
            message.check_length(data)
        except LineTooLong:
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return
        text = text.replace("\r", "").replace("\n", "").replace("\0", "")
        try:
            msg = message.parse(text)
        except BadMessage:
            return
        self.assertTrue(msg.command)
        self.assertNotIn(" ", msg.command)
        for p in msg.params[:-1]:
            self.assertTrue(p)
            self.assertNotIn(" ", p)

    @settings(max_examples=400, deadline=None)
    @given(st.text(alphabet="ab :@;=\\#!\x01é", max_size=40).filter(lambda s: s.strip()))
    def test_roundtrip_of_built_lines(self, word):
        """A built line parses back to what was built (after making it safe)."""
        params = ["#room", word]
        line = message.build("PRIVMSG", params, source="nick!u@h", tags={"t": word})
        msg = message.parse(line)
        self.assertEqual(msg.command, "PRIVMSG")
        self.assertEqual(msg.params, ["#room", word])
        self.assertEqual(msg.tags, {"t": word})

    @settings(max_examples=300, deadline=None)
    @given(st.lists(_text, max_size=5), _text, st.dictionaries(_text, _text, max_size=3))
    def test_built_lines_are_one_line(self, params, source, tags):
        line = message.build("PRIVMSG", params, source=source, tags=tags)
        for bad in "\r\n\0":
            self.assertNotIn(bad, line)
