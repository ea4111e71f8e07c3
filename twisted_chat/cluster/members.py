"""Who is where in a cluster: the other servers' members, and nicks unique
across all servers.

Each server tells the others, through Redis publications, of its members'
joins, parts, kicks, quits and renames (the very events its own members
get, so every face renders them as it renders its own) and, when it
subscribes, the whole of its membership (``hello``; the others answer with
theirs, ``state``, and with the nicks given up that they remember, for a
new server's WHOWAS). From that each server keeps, per other server, who is
in which rooms, with its operator and voice marks there, and what it says
of itself (away message, real name, account): ``names``, ``/who`` and
``/rooms`` list the whole cluster, and a member's away state, real name or
login reaches the members of its rooms on every server, as on its own.

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
from weakref import WeakKeyDictionary

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


class Remote:
    """A member of another server, as far as this one knows: what WHO,
    WHOIS and ``names`` say of it (the faces read it as they read a
    :class:`~twisted_chat.hub.Member`: ``nick``, ``away``, ``realname``,
    ``account``)."""

    __slots__ = ("nick", "rooms", "marks", "away", "realname", "account", "server")
    registered = True

    def __init__(self, nick: str, server: "_Server", info=None):
        self.nick = nick
        self.server = server
        self.rooms: Dict[str, str] = {}  # room key -> room name
        self.marks: Dict[str, str] = {}  # room key -> "o", "v", "ov" (absent: none)
        info = info or {}
        self.away = info.get("away")
        self.realname = info.get("realname")
        self.account = info.get("account")

    def __repr__(self) -> str:
        return f"<Remote {self.nick}>"


class _Server:
    """What this server knows of another one."""

    __slots__ = ("id", "heard", "members")

    def __init__(self, server_id: str, now: float):
        self.id = server_id
        self.heard = now
        self.members: Dict[str, Remote] = {}  # folded nick -> its member


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
        self.rooms_index: Dict[str, Dict[str, Remote]] = {}  # room key -> {nick key: member}
        self.room_names: Dict[str, str] = {}
        self.holders: Dict[str, Remote] = {}  # folded nick -> member, of other servers
        # Invitations of this server's members (room keys) that this server
        # keeps: by operators of other servers (the room may have nobody
        # here), or to a room that emptied here while it has members
        # elsewhere. Each lasts until the member joins or goes, or the room
        # has nobody on any server (as a single server's invitations).
        self.invites: "WeakKeyDictionary" = WeakKeyDictionary()
        # Rooms with members elsewhere that this server does not hold: with
        # len(hub.rooms), the cluster's rooms, counted without a walk.
        self._elsewhere_only = 0
        self._vacated = set()  # room keys nobody elsewhere is in any more
        self._judging_from = now()  # no server is judged gone before this
        # Until when a state answer's nicks given up (WHOWAS) are taken: once,
        # in the first DEAD_AFTER seconds after the first subscription.
        self._departures_until: Optional[float] = None
        hub.cluster = self
        # Guests are guest<tag>-N: unique across the cluster without a claim.
        hub.guest_prefix = f"guest{server_id[:4]}-"

    # -- the hub's questions -------------------------------------------------------

    def holder(self, key: str) -> Optional[str]:
        """The nick of another server's member whose folded nick is ``key``."""
        remote = self.holders.get(key)
        return remote.nick if remote is not None else None

    def member(self, key: str) -> Optional[Remote]:
        """Another server's member whose folded nick is ``key``."""
        return self.holders.get(key)

    def nicks(self, room_key: str) -> List[str]:
        members = self.rooms_index.get(room_key)
        return [r.nick for r in members.values()] if members else []

    def members_of(self, room_key: str) -> List[Remote]:
        members = self.rooms_index.get(room_key)
        return list(members.values()) if members else []

    def names(self, room_key: str):
        """The other servers' members of a room: (nicks, operators, voiced)."""
        nicks, ops, voiced = [], [], []
        for r in self.rooms_index.get(room_key, {}).values():
            nicks.append(r.nick)
            marks = r.marks.get(room_key)
            if marks:
                if "o" in marks:
                    ops.append(r.nick)
                if "v" in marks:
                    voiced.append(r.nick)
        return nicks, ops, voiced

    def invited(self, member, room_key: str) -> bool:
        """Whether an operator of another server invited ``member`` to the room."""
        keys = self.invites.get(member)
        return keys is not None and room_key in keys

    def rooms(self) -> dict:
        return {key: [self.room_names.get(key, key), len(members)]
                for key, members in self.rooms_index.items() if members}

    def users(self) -> int:
        """The other servers' members (O(servers): each server's are a dict)."""
        return sum(len(server.members) for server in self.servers.values())

    def rooms_elsewhere(self) -> int:
        """Rooms with members on other servers that this server does not hold."""
        return self._elsewhere_only

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
        keys = self.invites.get(member)
        if keys is not None:
            keys.discard(room.key)
        self.publish(["join", member.nick, room.key, room.name, _wire(event),
                      _marks(member, room), _info(member)])

    def marked(self, member, room) -> None:
        """``member``'s operator or voice mark in ``room`` may have changed."""
        if member.registered and room in member.rooms:
            self.publish(["marks", member.nick, room.key, _marks(member, room)])

    def away(self, member, event: Optional[Event]) -> None:
        """``member`` went away or came back (``event`` None: nobody to tell)."""
        if member.registered:
            self.publish(["away", member.nick, member.away, _wire(event) if event else None])

    def realname(self, member, event: Optional[Event]) -> None:
        if member.registered:
            self.publish(["realname", member.nick, member.realname,
                          _wire(event) if event else None])

    def account(self, member, event: Optional[Event]) -> None:
        """``member`` logged in (``event``: what its rooms' members hear)."""
        if member.registered:
            self.publish(["account", member.nick, member.account,
                          _wire(event) if event else None])

    def invite(self, member, room_key: str) -> None:
        """An operator of another server invited ``member`` (of this one)."""
        keys = self.invites.get(member)
        if keys is None:
            keys = self.invites[member] = set()
        keys.add(room_key)

    def emptied(self, room) -> None:
        """The last member here left ``room``: its invitations last while it
        has members elsewhere (this server keeps them), else they end."""
        if room.key in self.rooms_index:
            for member in room.invited:
                self.invite(member, room.key)
        else:
            self._end_invites(room.key)

    def formed(self, key: str) -> None:
        """The hub holds the room ``key`` now."""
        if key in self.rooms_index:
            self._elsewhere_only -= 1

    def dropped(self, key: str) -> None:
        """The hub no longer holds the room ``key``."""
        if key in self.rooms_index:
            self._elsewhere_only += 1

    def left(self, member, room, event: Event) -> None:
        self.publish(["part", member.nick, room.key, _wire(event)])

    def renamed(self, member, old: str, event: Event) -> None:
        self.publish(["nick", old, member.nick, _wire(event)])
        self._release(old)

    def gone(self, member, reason: str) -> None:
        self.invites.pop(member, None)
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
        """An operator here acts (kick, op, voice, ban, invite) on ``nick``,
        a member of another server, or a member here logged in to the
        account whose nick ``nick`` holds there (yield, no room): that
        server does it."""
        self.publish(["act", action, room.key if room is not None else None, nick, by, arg])

    def state(self) -> dict:
        """This server's membership: nick -> [[[room key, room name, marks],
        ...], info] (info: away, realname, account, those it has)."""
        return {m.nick: [[[r.key, r.name, _marks(m, r)] for r in m.rooms], _info(m)]
                for m in self.hub.members.values() if m.registered and not m.gone}

    # -- the link's news -------------------------------------------------------------

    def subscribed(self) -> None:
        """(Re)subscribed: say who is here, ask the others; claim our nicks
        again (Redis may have restarted empty); judge nobody for a while."""
        self._judging_from = self.now() + DEAD_AFTER
        if self._departures_until is None:
            self._departures_until = self.now() + DEAD_AFTER
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
            self._settle()

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
        self._settle()

    def _on_hb(self, server):
        pass

    def _on_hello(self, server, state):
        self._replace(server, state)
        # The nicks given up that this server remembers go with it: a
        # server that has just started knows no older ones (WHOWAS).
        self.publish(["state", self.state(), self.hub.departures()])

    def _on_state(self, server, state, departures=()):
        self._replace(server, state)
        if departures and self._departures_until is not None \
                and self.now() < self._departures_until:
            self._departures_until = 0.0  # from one server only: each has them all
            self.hub.learn_departures(departures)

    def _on_join(self, server, nick, key, name, event, marks="", info=None):
        remote = server.members.get(fold(nick))
        if remote is None:
            remote = server.members[fold(nick)] = Remote(nick, server, info)
            self.holders[fold(nick)] = remote
            self.hub.counted()
        remote.rooms[key] = name
        if marks:
            remote.marks[key] = marks
        self._index(key, fold(nick), remote)
        self.room_names.setdefault(key, name)
        self.hub.remote_event([key], _event(event), nick, True)
        if remote.away is not None:
            # The room learns that the joiner is away, as its own server's do.
            self.hub.remote_event([key], Event.timed("away", self.hub.clock(), nick=nick,
                                                     message=remote.away))

    def _on_part(self, server, nick, key, event):
        remote = server.members.get(fold(nick))
        if remote is not None:
            remote.rooms.pop(key, None)
            remote.marks.pop(key, None)
        self._unindex(key, fold(nick))
        self.hub.remote_event([key], _event(event), nick, False)

    def _on_nick(self, server, old, new, event):
        remote = server.members.pop(fold(old), None)
        if remote is None:
            remote = Remote(new, server)
        else:
            self._unhold(fold(old), remote)
            self.hub.departed_elsewhere(old, remote.realname, remote.account)
        remote.nick = new
        server.members[fold(new)] = remote
        self.holders[fold(new)] = remote
        self.hub.counted()  # (a member unknown till now counts from here)
        for key in remote.rooms:
            self._unindex(key, fold(old))
            self._index(key, fold(new), remote)
        self.hub.remote_event(list(remote.rooms), _event(event))

    def _on_quit(self, server, nick, event):
        remote = server.members.pop(fold(nick), None)
        if remote is None:
            return
        self._unhold(fold(nick), remote)
        self.hub.departed_elsewhere(remote.nick, remote.realname, remote.account)
        for key in remote.rooms:
            self._unindex(key, fold(nick))
        self.hub.remote_event(list(remote.rooms), _event(event))

    def _on_marks(self, server, nick, key, marks):
        remote = server.members.get(fold(nick))
        if remote is not None and key in remote.rooms:
            if marks:
                remote.marks[key] = marks
            else:
                remote.marks.pop(key, None)

    def _on_away(self, server, nick, message, event):
        self._said(server, nick, "away", message, event)

    def _on_realname(self, server, nick, realname, event):
        self._said(server, nick, "realname", realname, event)

    def _on_account(self, server, nick, account, event):
        self._said(server, nick, "account", account, event)

    def _said(self, server, nick, attr, value, event):
        """A member of ``server`` changed what it says of itself: its rooms'
        members here hear ``event`` (if any), as its own server's do."""
        remote = server.members.get(fold(nick))
        if remote is None:
            return
        setattr(remote, attr, value)
        if event is not None and remote.rooms:
            self.hub.remote_event(list(remote.rooms), _event(event))

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
        for nick, (rooms, info) in state.items():
            key = fold(nick)
            remote = server.members[key] = Remote(nick, server, info)
            self.holders[key] = remote
            for room_key, name, marks in rooms:
                remote.rooms[room_key] = name
                if marks:
                    remote.marks[room_key] = marks
                self._index(room_key, key, remote)
                self.room_names.setdefault(room_key, name)
        self.hub.counted()

    def _forget(self, server):
        members, server.members = server.members, {}
        for key, remote in members.items():
            self._unhold(key, remote)
            for room_key in remote.rooms:
                self._unindex(room_key, key)

    def _drop(self, server):
        del self.servers[server.id]
        t = self.hub.clock()
        for remote in list(server.members.values()):
            self.hub.departed_elsewhere(remote.nick, remote.realname, remote.account)
            self.hub.remote_event(list(remote.rooms), Event.timed(
                "quit", t, nick=remote.nick, ts=None, reason="server gone"))
        self._forget(server)

    def _unhold(self, key, remote):
        """``remote`` no longer holds the nick ``key``; another server's
        member may still (one logged in to its account while the other's
        rename was on its way)."""
        if self.holders.get(key) is remote:
            del self.holders[key]
            for server in self.servers.values():
                other = server.members.get(key)
                if other is not None:
                    self.holders[key] = other
                    break

    def _index(self, room_key, nick_key, remote):
        members = self.rooms_index.get(room_key)
        if members is None:
            members = self.rooms_index[room_key] = {}
            if room_key not in self.hub.rooms:
                self._elsewhere_only += 1
        members[nick_key] = remote

    def _unindex(self, room_key, nick_key):
        members = self.rooms_index.get(room_key)
        if members is not None:
            members.pop(nick_key, None)
            if not members:
                del self.rooms_index[room_key]
                if room_key not in self.hub.rooms:
                    self._elsewhere_only -= 1
                self._vacated.add(room_key)

    def _settle(self):
        """After a publication (or a server gone): the rooms that nobody
        elsewhere is in any more, and nobody here either, end their
        invitations. (Not at once: a rename or a server's new state takes
        its members out of a room's index and puts them back.)"""
        if not self._vacated:
            return
        vacated, self._vacated = self._vacated, set()
        for key in vacated:
            if key not in self.rooms_index:
                room = self.hub.rooms.get(key)
                if room is None or not room.members:
                    self._end_invites(key)

    def _end_invites(self, key):
        for keys in list(self.invites.values()):
            keys.discard(key)


def _marks(member, room) -> str:
    """A member's marks in a room, as ``names`` shows them: o (operator), v."""
    return ("o" if member in room.ops else "") + ("v" if member in room.voiced else "")


def _info(member) -> dict:
    """What a member says of itself, those it has (for the other servers)."""
    info = {}
    for attr in ("away", "realname", "account"):
        value = getattr(member, attr)
        if value is not None:
            info[attr] = value
    return info


def _wire(event: Event) -> list:
    return [event.type, event.fields]


def _event(wire) -> Event:
    return Event(wire[0], dict(wire[1]))


__all__ = ["Members", "Remote", "HEARTBEAT", "DEAD_AFTER"]
