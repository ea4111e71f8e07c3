"""Parsing of client lines and validation of nicks and rooms (no sockets)."""

from twisted.trial.unittest import SynchronousTestCase

from twisted_chat.commands import Command, fold, parse, strip_controls, valid_nick, valid_room
from twisted_chat.errors import ChatError


class ParseTests(SynchronousTestCase):
    def test_chat_line(self):
        self.assertEqual(parse("hello"), Command("say", text="hello"))

    def test_double_slash_sends_literal_slash(self):
        self.assertEqual(parse("//shrug"), Command("say", text="/shrug"))

    def test_blank_lines_are_nothing(self):
        self.assertIsNone(parse(""))
        self.assertIsNone(parse("   \t"))

    def test_commands_are_case_insensitive(self):
        self.assertEqual(parse("/NICK alice"), Command("nick", arg="alice"))

    def test_unknown_command(self):
        e = self.assertRaises(ChatError, parse, "/frobnicate now")
        self.assertEqual(e.code, "unknown-command")

    def test_usage_errors(self):
        for line in ("/nick", "/nick a b", "/join", "/msg bob", "/me", "/mode xml", "/who a b"):
            e = self.assertRaises(ChatError, parse, line)
            self.assertEqual(e.code, "usage", line)

    def test_msg_keeps_spaces_in_text(self):
        self.assertEqual(parse("/msg bob  hi  there"), Command("msg", arg="bob", text="hi  there"))


class NameTests(SynchronousTestCase):
    def test_nick_rules(self):
        self.assertEqual(valid_nick("alice_2-b"), "alice_2-b")
        self.assertEqual(valid_nick("Ｚoë"), "Zoë")  # NFKC: full-width Z
        for bad in ("", "2alice", "_x", "a" * 25, "al ice", "al!ce", "-a"):
            self.assertEqual(self.assertRaises(ChatError, valid_nick, bad).code, "nick-invalid", bad)

    def test_nick_length_counts_after_nfkc(self):
        self.assertEqual(len(valid_nick("ｘ" * 24)), 24)

    def test_fold_collides_case_and_width(self):
        self.assertEqual(fold("Alice"), fold("alice"))
        self.assertEqual(fold("Ａlice"), fold("alice"))

    def test_room_rules(self):
        self.assertEqual(valid_room("#dev"), "dev")
        self.assertEqual(valid_room("2026-plans"), "2026-plans")
        for bad in ("", "#", "a" * 33, "a b", "dev!"):
            self.assertEqual(self.assertRaises(ChatError, valid_room, bad).code, "room-invalid", bad)

    def test_controls_stripped(self):
        self.assertEqual(strip_controls("a\x1b[31mb\x00c\x7fd\x85e\tf"), "a[31mbcde\tf")
