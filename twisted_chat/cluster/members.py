"""Who is where in a cluster: the other servers' members, and nicks unique
across all servers.

Each server tells the others, through Redis publications, of its members'
joins, parts, kicks, quits and renames (the very events its own members
get, so every face renders them as it renders its own) and, when it
subscribes, the whole of its membership (``hello``; the others answer with
theirs, ``state``). From that each server keeps, per other server, who is
in which rooms: ``names``, ``/who`` and ``/rooms`` list the whole cluster.

A server publishes a heartbeat every HEARTBEAT seconds. One not heard from
for DEAD_AFTER seconds (killed, cut off) is gone: its members quit, as far
as this server's members can tell, with the reason ``server gone``. A
server that has itself lost Redis judges nobody until it has been
subscribed again for DEAD_AFTER seconds.

Nicks are claimed in Redis, one key per folded nick
(``twisted-chat:nick:KEY`` = the holder's server id), by a script that
takes a free key or one whose server is gone (its ``alive`` key, refreshed
with each heartbeat, has expired): of two servers racing for a nick, one
gets it and the other ``nick-taken``. Guest nicks carry a per-server mark
and need no claim. While Redis is away a nick is checked against what this
server knows only; after a Redis restart (which keeps nothing) every
server claims its members' nicks again.
"""

import time
from typing import Callable, Dict, List, Optional

from twisted.logger import Logger

from ..commands import fold
from ..events import Event
from ..history.interface import RoomRecord

log = Logger()

HEARTBEAT = 5.0  # seconds between a server's heartbeats
DEAD_AFTER = 20.0  # seconds of silence after which a server is gone
# Seconds a server's alive key outlives its last heartbeat: less than
# DEAD_AFTER, so its nicks are free by the time the others see it gone.
ALIVE_TTL = int(DEAD_AFTER - HEARTBEAT)
PREFIX = "twisted-chat:"

# KEYS[1] the nick's key; ARGV[1] the claimant's server id, ARGV[2] the key
# prefix of servers' alive keys. 1: the nick is the claimant's now.
_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. holder) == 1 then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""
# Let a nick go, if it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
end
return 1
"""


class _Server:
    """What this server knows of another one."""

    __slots__ = ("id", "heard", "members")

    def __init__(self, server_id: str, now: float):
        self.id = server_id
        self.heard = now
        self.members: Dict[str, list] = {}  # folded nick -> [nick, {room key: name}]


class Members:
    """The hub's ``cluster``: it answers the hub's questions about the
    other servers and tells them what happens here (``publish(item)``: an
    item for the next publication, see :mod:`.store`)."""

    def __init__(self, hub, server_id: str, publish: Callable[[list], None], link, clock,
                 now: Callable[[], float] = time.monotonic):
        self.hub = hub
        self.server_id = server_id
        self.publish = publish
        self.link = link  # RedisLink: .publisher (commands), .subscribed
        self.clock = clock
        self.now = now
        self.servers: Dict[str, _Server] = {}
        self.rooms_index: Dict[str, Dict[str, str]] = {}  # room key -> {nick key: nick}
        self.room_names: Dict[str, str] = {}
        self.holders: Dict[str, str] = {}  # folded nick -> nick, of other servers
        self._judging_from = now()  # no server is judged gone before this
        hub.cluster = self
        # Guests are guest<tag>-N: unique across the cluster without a claim.
        hub.guest_prefix = f"guest{server_id[:4]}-"

    # -- the hub's questions -------------------------------------------------------

    def holder(self, key: str) -> Optional[str]:
        """The nick of another server's member whose folded nick is ``key``."""
        return self.holders.get(key)

    def nicks(self, room_key: str) -> List[str]:
        members = self.rooms_index.get(room_key)
        return list(members.values()) if members else []

    def rooms(self) -> dict:
        return {key: [self.room_names.get(key, key), len(members)]
                for key, members in self.rooms_index.items() if members}

    # -- what happens here -----------------------------------------------------------

    def claim(self, member, nick: str, answer: Callable) -> None:
        """Claim ``nick`` in Redis; ``answer(member, nick, ok)`` later."""
        p = self.link.publisher
        if p is None or not p.connected:
            answer(member, nick, True)  # Redis away: this server's word only
            return
        d = p.eval(_CLAIM, [PREFIX + "nick:" + fold(nick)],
                   [self.server_id, PREFIX + "alive:"])

        def done(result):
            answer(member, nick, result == 1)

        def failed(failure):
            log.warn("cluster: claiming a nick failed: {error}", error=failure.getErrorMessage())
            answer(member, nick, True)

        d.addCallbacks(done, failed)

    def _release(self, nick: str) -> None:
        p = self.link.publisher
        if p is not None and p.connected and not nick.startswith(self.hub.guest_prefix):
            p.eval(_RELEASE, [PREFIX + "nick:" + fold(nick)], [self.server_id]).addErrback(
                lambda f: None)

    def joined(self, member, room, event: Event) -> None:
        self.publish(["join", member.nick, room.key, room.name, _wire(event)])

    def left(self, member, room, event: Event) -> None:
        self.publish(["part", member.nick, room.key, _wire(event)])

    def renamed(self, member, old: str, event: Event) -> None:
        self.publish(["nick", old, member.nick, _wire(event)])
        self._release(old)

    def gone(self, member, reason: str) -> None:
        if member.registered:
            event = Event.timed("quit", self.hub.clock(), nick=member.nick, ts=None,
                                reason=reason)
            self.publish(["quit", member.nick, _wire(event)])
        self._release(member.nick)

    def room_event(self, room, event: Event) -> None:
        """A topic or mode change in ``room``: its members elsewhere hear it."""
        self.publish(["ev", room.key, _wire(event)])

    def saved(self, record: RoomRecord) -> None:
        """A room's lasting state changed here: it changes everywhere."""
        self.publish(["room", list(record)])

    def act(self, action: str, room, nick: str, by: str, arg) -> None:
        """An operator here acts (kick, op, voice, ban) on ``nick``, a
        member of another server: that server does it."""
        self.publish(["act", action, room.key, nick, by, arg])

    def state(self) -> dict:
        """This server's membership: nick -> [[room key, room name], ...]."""
        return {m.nick: [[r.key, r.name] for r in m.rooms]
                for m in self.hub.members.values() if m.registered and not m.gone}

    # -- the link's news -------------------------------------------------------------

    def subscribed(self) -> None:
        """(Re)subscribed: say who is here, ask the others; claim our nicks
        again (Redis may have restarted empty); judge nobody for a while."""
        self._judging_from = self.now() + DEAD_AFTER
        for server in self.servers.values():
            server.heard = self.now()
        self.publish(["hello", self.state()])
        self.heartbeat()
        p = self.link.publisher
        if p is not None and p.connected:
            for m in list(self.hub.members.values()):
                if m.registered and not m.nick.startswith(self.hub.guest_prefix):
                    d = p.eval(_CLAIM, [PREFIX + "nick:" + m.key],
                               [self.server_id, PREFIX + "alive:"])
                    d.addCallback(self._reclaimed, m.nick).addErrback(lambda f: None)

    def _reclaimed(self, result, nick):
        if result != 1:
            log.warn("cluster: the nick {nick} is held on two servers (taken elsewhere "
                     "while Redis was away)", nick=nick)

    def heartbeat(self) -> None:
        """Every HEARTBEAT seconds: say we live, and judge the others."""
        self.publish(["hb"])
        p = self.link.publisher
        if p is not None and p.connected:
            p.set(PREFIX + "alive:" + self.server_id, 1, expire=ALIVE_TTL).addErrback(
                lambda f: None)
        now = self.now()
        if self.link.subscribed and now >= self._judging_from:
            for server in list(self.servers.values()):
                if now - server.heard > DEAD_AFTER:
                    log.info("cluster: server {id} is gone (silent for {s:.0f} s); its "
                             "members quit", id=server.id, s=now - server.heard)
                    self._drop(server)

    def heard(self, server_id: str, items: list) -> None:
        """A publication of another server (its presence items)."""
        server = self.servers.get(server_id)
        if server is None:
            server = self.servers[server_id] = _Server(server_id, self.now())
            log.info("cluster: server {id} is here", id=server_id)
        server.heard = self.now()
        for item in items:
            kind = item[0]
            try:
                getattr(self, "_on_" + kind)(server, *item[1:])
            except Exception:
                log.failure("cluster: presence item {kind}", kind=kind)

    def _on_hb(self, server):
        pass

    def _on_hello(self, server, state):
        self._replace(server, state)
        self.publish(["state", self.state()])

    def _on_state(self, server, state):
        self._replace(server, state)

    def _on_join(self, server, nick, key, name, event):
        entry = server.members.get(fold(nick))
        if entry is None:
            entry = server.members[fold(nick)] = [nick, {}]
            self.holders[fold(nick)] = nick
        entry[1][key] = name
        self.rooms_index.setdefault(key, {})[fold(nick)] = nick
        self.room_names.setdefault(key, name)
        self.hub.remote_event([key], _event(event), nick, True)

    def _on_part(self, server, nick, key, event):
        entry = server.members.get(fold(nick))
        if entry is not None:
            entry[1].pop(key, None)
        self._unindex(key, fold(nick))
        self.hub.remote_event([key], _event(event), nick, False)

    def _on_nick(self, server, old, new, event):
        entry = server.members.pop(fold(old), None)
        self.holders.pop(fold(old), None)
        rooms = entry[1] if entry is not None else {}
        server.members[fold(new)] = [new, rooms]
        self.holders[fold(new)] = new
        for key in rooms:
            self._unindex(key, fold(old))
            self.rooms_index.setdefault(key, {})[fold(new)] = new
        self.hub.remote_event(list(rooms), _event(event))

    def _on_quit(self, server, nick, event):
        entry = server.members.pop(fold(nick), None)
        self.holders.pop(fold(nick), None)
        if entry is None:
            return
        for key in entry[1]:
            self._unindex(key, fold(nick))
        self.hub.remote_event(list(entry[1]), _event(event))

    def _on_ev(self, server, key, event):
        self.hub.remote_event([key], _event(event))

    def _on_room(self, server, fields):
        fields[10] = tuple(fields[10])  # ops
        fields[11] = tuple(tuple(ban) for ban in fields[11])  # bans
        self.hub.remote_room(RoomRecord(*fields))

    def _on_act(self, server, action, key, nick, by, arg):
        self.hub.remote_act(action, key, nick, by, arg)

    # -- bookkeeping ------------------------------------------------------------------

    def _replace(self, server, state):
        """A server's whole membership, as it says (no events: a fresh
        server has nobody yet; one coming back from a Redis outage has the
        same people, mostly)."""
        self._forget(server)
        for nick, rooms in state.items():
            key = fold(nick)
            server.members[key] = [nick, {k: name for k, name in rooms}]
            self.holders[key] = nick
            for room_key, name in rooms:
                self.rooms_index.setdefault(room_key, {})[key] = nick
                self.room_names.setdefault(room_key, name)

    def _forget(self, server):
        for key, (nick, rooms) in server.members.items():
            if self.holders.get(key) == nick:
                del self.holders[key]
            for room_key in rooms:
                self._unindex(room_key, key)
        server.members = {}

    def _drop(self, server):
        del self.servers[server.id]
        t = self.hub.clock()
        for key, (nick, rooms) in list(server.members.items()):
            self.hub.remote_event(list(rooms), Event.timed(
                "quit", t, nick=nick, ts=None, reason="server gone"))
        self._forget(server)

    def _unindex(self, room_key, nick_key):
        members = self.rooms_index.get(room_key)
        if members is not None:
            members.pop(nick_key, None)
            if not members:
                del self.rooms_index[room_key]


def _wire(event: Event) -> list:
    return [event.type, event.fields]


def _event(wire) -> Event:
    return Event(wire[0], dict(wire[1]))


__all__ = ["Members", "HEARTBEAT", "DEAD_AFTER"]
