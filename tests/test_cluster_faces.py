"""Every face in a cluster: an IRC client on one server, a browser's
WebSocket on the other and a line client, one chat (issue 15)."""

import re

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
        irc.register("ircy")
        # The nick is claimed across the cluster: the rename follows.
        irc.expect_msg("NICK", "ircy")
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
        pattern = re.compile(r"irc listening on tcp:(\d+)")
        for line in list(server.log):
            if pattern.search(line):
                return int(pattern.search(line).group(1))
        return int(pattern.search(server.wait_for_log(pattern)).group(1))
