"""Every face in a cluster: an IRC client on one server, a browser's
WebSocket on the other and a line client, one chat (issue 15); and what
IRC shows of another server's members: their marks in NAMES and WHO, their
away states, real names, accounts and old nicks, invitations across (and
how long they last), LUSERS's counts of the whole cluster, and a
registration welcomed under the nick asked for."""

import json
import os
import re
import shutil
import tempfile
import time

from twisted_chat import passwords

from .test_accounts import CHEAP
from .test_cluster_server import ClusterTestCase
from .test_irc_server import IRCLineClient
from .web_support import WSClient, web_port

LOOPBACK = "tcp:0:interface=127.0.0.1"


class FacesTests(ClusterTestCase):
    def test_irc_on_one_server_websocket_and_line_on_the_other(self):
        a = self.server("--irc", LOOPBACK)
        b = self.server("--web", LOOPBACK)
        irc = IRCLineClient(self.irc_port(a))
        self.addCleanup(irc.close)
        # The welcome waits for the nick's claim across the cluster: 001
        # names the nick asked for.
        self.assertEqual(irc.register("ircy").params[0], "ircy")
        web = WSClient(web_port(b))
        self.addCleanup(web.close)
        self.assertEqual(web.event()["type"], "welcome")
        web.send("/nick webby")
        web.expect_event("names")
        line = self.client(a, "liney")

        irc.expect_msg("JOIN", "#lobby")  # webby's join, from the other server
        irc.send("PRIVMSG #lobby :hello from irc")
        got = web.expect_event("message", nick="ircy")
        self.assertEqual(got["text"], "hello from irc")
        self.assertEqual(line.expect_event("message", nick="ircy")["id"], got["id"])
        web.send("hello from the browser")
        m = irc.expect_msg("PRIVMSG", "#lobby")
        self.assertEqual(m.params[1], "hello from the browser")
        self.assertEqual(line.expect_event("message", nick="webby")["text"],
                         "hello from the browser")
        irc.send("PRIVMSG webby :psst")
        self.assertEqual(web.expect_event("private")["text"], "psst")
        web.send("/nick ircy")
        self.assertEqual(web.expect_event("error")["code"], "nick-taken")

    def irc_port(self, server):
        return irc_port(server)


def irc_port(server):
    pattern = re.compile(r"irc listening on tcp:(\d+)")
    for line in list(server.log):
        if pattern.search(line):
            return int(pattern.search(line).group(1))
    return int(pattern.search(server.wait_for_log(pattern)).group(1))


CAPS = ("multi-prefix", "away-notify", "setname", "account-notify", "extended-join",
        "account-tag")


class IRCAcrossTests(ClusterTestCase):
    """IRC clients on two servers of a cluster (sharing an accounts file)."""

    accounts = {"alice": "alice's pass phrase"}

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="chat-cluster-accounts-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "accounts")
        for name, password in self.accounts.items():
            passwords.set_account(self.path, name, passwords.hash_password(password, **CHEAP))

    def server(self, *args):
        return super().server("--irc", LOOPBACK, "--auth", f"chat-passwd:{self.path}",
                              "--guests", "yes", *args)

    def irc(self, server, nick, caps=CAPS):
        c = IRCLineClient(irc_port(server))
        self.addCleanup(c.close)
        if nick:
            welcome = c.register(nick, caps)
            self.assertEqual(welcome.params[0], nick)
        return c

    def until(self, client, command, reply, condition, end, timeout=10):
        """Send ``command`` until the replies (numeric ``reply``, up to the
        numeric ``end``) meet ``condition``; the replies."""
        deadline = time.monotonic() + timeout
        while True:
            client.send(command)
            got = []
            while True:
                m = client.msg()
                if m.command == reply:
                    got.append(m)
                elif m.command == end:
                    break
            if condition(got):
                return got
            self.assertLess(time.monotonic(), deadline, f"never: {command} -> {got}")
            time.sleep(0.05)

    def names(self, client, ch, condition):
        """Ask NAMES of ``ch`` until its words (of every 353) meet ``condition``."""
        return self.until(client, f"NAMES {ch}", "353", lambda got: condition(
            [w for m in got for w in m.params[-1].split()]), "366")

    def test_names_and_who_show_marks_of_other_servers_members(self):
        a, b = self.server(), self.server()
        anna = self.irc(a, "anna")
        anna.send("JOIN #dev")  # the first in dev: its operator
        anna.expect_msg("366")
        bert = self.irc(b, "bert")
        self.names(bert, "#dev", lambda w: w == ["@anna"])  # anna's mark, from a
        bert.send("JOIN #dev")
        bert.expect_msg("JOIN", "#dev")
        self.assertEqual(sorted(bert.expect_msg("353").params[-1].split()), ["@anna", "bert"])
        anna.expect_msg("JOIN", "#dev")
        # anna (on a) voices bert (on b), then makes him an operator too:
        # both servers show both marks (multi-prefix).
        anna.send("MODE #dev +v bert")
        bert.expect_msg("MODE", "#dev", "+v", "bert")
        anna.send("MODE #dev +o bert")
        bert.expect_msg("MODE", "#dev", "+o", "bert")
        self.names(anna, "#dev", lambda w: sorted(w) == ["@+bert", "@anna"])
        self.names(bert, "#dev", lambda w: sorted(w) == ["@+bert", "@anna"])
        who = self.until(anna, "WHO #dev", "352", lambda got: len(got) == 2, "315")
        self.assertEqual({m.params[5]: m.params[6] for m in who}, {"anna": "H@", "bert": "H@+"})
        who = self.until(bert, "WHO #dev", "352", lambda got: len(got) == 2, "315")
        self.assertEqual({m.params[5]: m.params[6] for m in who}, {"anna": "H@", "bert": "H@+"})
        # WHOIS of the other server's member: its channels with its marks.
        anna.send("WHOIS bert")
        self.assertEqual(sorted(anna.expect_msg("319").params[2].split()), ["#lobby", "@#dev"])
        anna.expect_msg("318")
        # bert (on b) takes anna's operator status away: a's view follows.
        bert.send("MODE #dev -o anna")
        anna.expect_msg("MODE", "#dev", "-o", "anna")
        self.names(bert, "#dev", lambda w: sorted(w) == ["@+bert", "anna"])
        # A server started now learns the marks from the others' state.
        carl = self.irc(self.server(), "carl")
        self.names(carl, "#dev", lambda w: sorted(w) == ["@+bert", "anna"])
        # The line face's names event carries them too.
        line = self.client(a, "liney")
        self.eventually(line, "/who dev", "names",
                        lambda ev: ev["ops"] == ["bert"] and ev["voiced"] == ["bert"])

    def test_invite_a_member_of_another_server(self):
        a, b = self.server(), self.server()
        anna = self.irc(a, "anna")
        anna.send("JOIN #den", "MODE #den +i")
        anna.expect_msg("MODE", "#den", "+i")
        bert = self.irc(b, "bert")
        bert.send("JOIN #den")
        self.assertEqual(bert.expect_msg("473").params[1], "#den")  # invite-only
        self.until(anna, "WHOIS bert", "311", lambda got: got, "318")
        anna.send("INVITE bert #den")
        self.assertEqual(anna.expect_msg("341").params[1:], ["bert", "#den"])
        invite = bert.expect_msg("INVITE")
        self.assertEqual((invite.source.split("!")[0], invite.params), ("anna", ["bert", "#den"]))
        bert.send("JOIN #den")
        bert.expect_msg("JOIN", "#den")
        anna.expect_msg("JOIN", "#den")
        # An invitation is used up by the join.
        bert.send("PART #den")
        bert.expect_msg("PART", "#den")
        bert.send("JOIN #den")
        self.assertEqual(bert.expect_msg("473").params[1], "#den")
        # The line face: /invite of a member of the other server.
        line_a, line_b = self.client(a, "liney"), self.client(b, "linus")
        line_a.send("/join den")
        line_a.expect_event("error")  # invite-only for liney too
        anna.send("INVITE liney #den")
        anna.expect_msg("341")
        line_a.send("/join den")
        line_a.expect_event("names", room="den")
        line_a.send("/invite linus den")
        self.assertEqual(line_a.expect_event("error")["code"], "not-operator")
        anna.send("MODE #den +o liney")
        line_a.expect_event("mode", room="den", mode="op")
        self.eventually(line_a, "/who lobby", "names", lambda ev: "linus" in ev["nicks"])
        line_a.send("/invite linus den")
        self.assertEqual(line_a.expect_event("info")["message"], "invited linus to den")
        got = line_b.expect_event("invite")
        self.assertEqual((got["room"], got["by"]), ("den", "liney"))
        line_b.send("/join den")
        self.assertEqual(sorted(line_b.expect_event("names", room="den")["nicks"]),
                         ["anna", "liney", "linus"])
        line_a.send("/invite nobody den")
        self.assertEqual(line_a.expect_event("error")["code"], "no-such-nick")
        self.eventually(line_a, "/who den", "names", lambda ev: "linus" in ev["nicks"])
        line_a.send("/invite linus den")
        self.assertEqual(line_a.expect_event("error")["code"], "usage")  # already in

    def test_an_invitation_lasts_while_the_room_has_members_on_any_server(self):
        a, b = self.server(), self.server()
        anna, cara = self.irc(a, "anna"), self.irc(a, "cara")
        anna.send("JOIN #den", "MODE #den +i")
        anna.expect_msg("MODE", "#den", "+i")
        bert, bea = self.irc(b, "bert"), self.irc(b, "bea")
        self.until(anna, "WHOIS bea", "311", lambda got: got, "318")  # after bert's, from b
        for nick in ("bert", "bea", "cara"):
            anna.send(f"INVITE {nick} #den")
            self.assertEqual(anna.expect_msg("341").params[1:], [nick, "#den"])
        for invited in (bert, bea, cara):
            invited.expect_msg("INVITE")
        bert.send("JOIN #den")
        bert.expect_msg("JOIN", "#den")
        anna.expect_msg("JOIN", "#den")
        # anna leaves: #den is empty on a, but bert is in it on b, so a
        # keeps cara's invitation.
        anna.send("PART #den")
        anna.expect_msg("PART", "#den")
        cara.send("JOIN #den")
        cara.expect_msg("JOIN", "#den")
        self.names(bea, "#den", lambda w: sorted(w) == ["bert", "cara"])  # b knows
        # Both leave: #den has nobody on any server, and bea's invitation
        # (kept by b, from a's operator) ends, as a single server's would.
        bert.send("PART #den")
        bert.expect_msg("PART", "#den")
        cara.send("PART #den")
        cara.expect_msg("PART", "#den")
        self.names(bea, "#den", lambda w: w == [])  # b heard cara's part
        bea.send("JOIN #den")
        self.assertEqual(bea.expect_msg("473").params[1], "#den")  # invite-only

    def lusers(self, client, condition, timeout=10):
        """Ask LUSERS until its replies (numeric -> the parameters after the
        nick) meet ``condition``; the replies."""
        deadline = time.monotonic() + timeout
        while True:
            client.send("LUSERS")
            said = {}
            while "266" not in said:
                m = client.msg()
                said[m.command] = m.params[1:]
            if condition(said):
                return said
            self.assertLess(time.monotonic(), deadline, f"never: {said}")
            time.sleep(0.05)

    def test_lusers_counts_the_whole_cluster(self):
        a, b = self.server(), self.server()
        anna = self.irc(a, "anna")
        self.irc(b, "bert")
        linus = self.client(b, "linus")  # a line client counts too
        linus.send("/join dev")
        linus.expect_event("names", room="dev")
        said = self.lusers(anna, lambda said: said["254"][0] == "2")  # dev, on b only
        self.assertEqual(said["251"], ["There are 3 users and 0 invisible on 2 servers"])
        self.assertEqual(said["254"], ["2", "channels formed"])  # lobby and dev
        self.assertEqual(said["255"], ["I have 1 clients and 1 servers"])
        self.assertEqual(said["265"], ["1", "1", "Current local users 1, max 1"])
        self.assertEqual(said["266"], ["3", "3", "Current global users 3, max 3"])
        # The welcome's LUSERS counts the whole cluster too.
        carl = IRCLineClient(irc_port(a))
        self.addCleanup(carl.close)
        carl.send("NICK carl", "USER carl 0 * :carl")
        self.assertEqual(carl.expect_msg("251").params[1:],
                         ["There are 4 users and 0 invisible on 2 servers"])
        self.assertEqual(carl.expect_msg("254").params[1:], ["2", "channels formed"])
        self.assertEqual(carl.expect_msg("255").params[1:], ["I have 2 clients and 1 servers"])
        # A third server; linus goes, and dev with him.
        self.server()
        linus.send("/quit")
        said = self.lusers(anna, lambda said: said["251"][0] ==
                           "There are 3 users and 0 invisible on 3 servers"
                           and said["254"][0] == "1")
        self.assertEqual(said["255"], ["I have 2 clients and 2 servers"])
        self.assertEqual(said["266"], ["3", "4", "Current global users 3, max 4"])

    def test_whowas_on_a_server_started_later(self):
        a = self.server()
        anna = self.irc(a, "anna")
        anna.send("SETNAME :Anna Annson", "NICK anya")
        anna.expect_msg("NICK", "anya")
        b = self.server()  # it learns, from a's answer, what a remembers
        bert = self.irc(b, "bert")
        was = self.until(bert, "WHOWAS anna", "314", lambda got: got, "369")
        self.assertEqual([(m.params[1], m.params[-1]) for m in was], [("anna", "Anna Annson")])

    def test_login_renames_a_guest_holding_the_nick_on_another_server(self):
        a, b = self.server(), self.server()
        watcher = self.irc(a, "watcher")
        squatter = self.client(b, "dave")  # dave has no account yet
        self.until(watcher, "WHOIS dave", "311", lambda got: got, "318")
        passwords.set_account(self.path, "dave", passwords.hash_password("daves-secret",
                                                                          **CHEAP))
        owner = self.client(a, None)
        owner.send("/login dave daves-secret")
        self.assertRegex(owner.expect_event("nick", new="dave")["old"], r"^guest")
        renamed = squatter.expect_event("nick", old="dave")
        self.assertRegex(renamed["new"], r"^guest")
        self.assertEqual(squatter.expect_event("info")["message"],
                         f"dave logged in to its account; you are now {renamed['new']}")
        # The same account logged in on the other server: the first
        # connection (on a) gives the nick up.
        again = self.client(b, None)
        again.send("/login dave daves-secret")
        again.expect_event("nick", new="dave")
        told = owner.expect_event("info")["message"]
        self.assertRegex(told, r"^dave logged in to its account; you are now guest\S+$")
        now = told.rsplit(" ", 1)[1]
        owner.send("/ping renamed")
        owner.expect_event("pong")
        self.assertIn({"old": "dave", "new": now}, [
            {"old": e["old"], "new": e["new"]}
            for e in (json.loads(line) for line in owner.seen if line.startswith("{"))
            if e.get("type") == "nick"])
        # Everybody agrees on who is dave now: b's.
        everybody = sorted(["watcher", "dave", renamed["new"], now])
        self.until(watcher, "WHO #lobby", "352",
                   lambda got: sorted(m.params[5] for m in got) == everybody, "315")

    def test_away_realname_account_and_whowas_of_other_servers_members(self):
        a, b = self.server(), self.server()
        anna = self.irc(a, "anna")
        bert = self.irc(b, "bert")
        anna.expect_msg("JOIN", "#lobby")  # bert's, from b
        bert.send("AWAY :at lunch")
        bert.expect_msg("306")
        away = anna.expect_msg("AWAY")
        self.assertEqual((away.source.split("!")[0], away.params), ("bert", ["at lunch"]))
        anna.send("WHO bert")
        self.assertEqual(anna.expect_msg("352").params[6], "G")
        anna.send("PRIVMSG bert :are you there?")
        self.assertEqual(anna.expect_msg("301").params[1:], ["bert", "at lunch"])
        bert.send("AWAY")
        bert.expect_msg("305")
        self.assertEqual(anna.expect_msg("AWAY").params, [])
        bert.send("SETNAME :Bert Bertson")
        bert.expect_msg("SETNAME")
        self.assertEqual(anna.expect_msg("SETNAME").params, ["Bert Bertson"])
        anna.send("WHOIS bert")
        self.assertEqual(anna.expect_msg("311").params[-1], "Bert Bertson")
        anna.expect_msg("318")
        # A login on b: account-notify on a; WHOIS shows the account.
        line = self.client(b, "lina")
        anna.expect_msg("JOIN", "#lobby")
        line.send("/login alice alice's pass phrase")
        line.expect_event("nick", new="alice")
        anna.expect_msg("NICK", "alice")
        acct = anna.expect_msg("ACCOUNT")
        self.assertEqual((acct.source.split("!")[0], acct.params), ("alice", ["alice"]))
        anna.send("WHOIS alice")
        self.assertEqual(anna.expect_msg("330").params[1:3], ["alice", "alice"])
        anna.expect_msg("318")
        # account-tag: its messages (and private ones) carry its account.
        line.send("hello from an account", "/msg anna psst")
        said = anna.expect_msg("PRIVMSG", "#lobby")
        self.assertEqual((said.params[1], said.tags.get("account")),
                         ("hello from an account", "alice"))
        said = anna.expect_msg("PRIVMSG", "anna")
        self.assertEqual((said.params[1], said.tags.get("account")), ("psst", "alice"))
        # An away member of b joining a room: a's members learn it is away.
        bert.send("AWAY :gone fishing", "JOIN #pond")
        anna.send("JOIN #pond")
        anna.expect_msg("366")
        self.until(anna, "WHO #pond", "352", lambda got: [m.params[6][0] for m in got
                                                          if m.params[5] == "bert"] == ["G"],
                   "315")
        # WHOWAS: who had a nick given up on the other server.
        bert.send("NICK bertie")
        anna.expect_msg("NICK", "bertie")
        anna.send("WHOWAS bert")
        was = anna.expect_msg("314")
        self.assertEqual((was.params[1], was.params[-1]), ("bert", "Bert Bertson"))
        anna.expect_msg("369")

    def test_registration_waits_for_the_nick_claim(self):
        a, b = self.server(), self.server()
        self.irc(a, "anna")
        c = IRCLineClient(irc_port(b))
        self.addCleanup(c.close)
        c.send("NICK anna", "USER anna 0 * :anna")
        taken = c.msg()
        while taken.command in ("NOTICE", "PING"):
            taken = c.msg()
        self.assertEqual(taken.command, "433")  # before any welcome
        self.assertEqual(taken.params[1], "anna")
        c.send("NICK annie")
        welcome = c.expect_msg("001")
        self.assertEqual(welcome.params[0], "annie")
        c.expect_msg("366")
        c.send("PING :after")
        lines = []
        while True:
            m = c.msg()
            if m.command == "PONG":
                break
            lines.append(m)
        self.assertEqual([m for m in lines if m.command == "NICK"], [])  # no rename after
