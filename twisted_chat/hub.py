"""The chat rules: members, nicks, rooms, operators, and who receives which event.

A member may be in several rooms (protocol v2); each room has a topic,
flags, operators, voiced members, bans and invitations, and the lasting part
of that (a :class:`~twisted_chat.history.RoomRecord`) is saved in the store.

The hub knows no transport. A connection is represented by a :class:`Member`
whose ``deliver`` callable takes an :class:`~twisted_chat.events.Event`; the
protocol layer supplies that callable and renders the event in its own mode.
Client mistakes raise :class:`~twisted_chat.errors.ChatError`.

Order. A message goes out only once its history store has stored it (the
store calls back later, after a group commit). So that nothing overtakes it,
every other event the hub emits while messages are pending waits in a queue
behind them, addressed to the members it had when it was made: everybody
sees events in the order the hub accepted them, and a room's messages go to
the room as it was when each was accepted.
"""

import time
from collections import deque
from typing import Callable, Dict, List, Optional

from twisted.internet.defer import fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from . import __version__, fanout, presence
from .commands import fold, strip_controls, valid_nick, valid_room
from .errors import ChatError
from .events import Event, error, rfc3339
from .history import HISTORY_CAP, IHistoryStore, private_message, room_message
from .metrics import Counts
from .history import paging
from .history.interface import RoomRecord, is_default
from .replay import RecentMessages

log = Logger()
PROTOCOL = 2  # the line protocol's version, named in the welcome
DEFAULT_REPLAY = 50  # messages replayed to a joiner (twistd chat --history)
DEFAULT_MAX_ROOMS = 50  # rooms per connection (twistd chat --max-rooms)
MAX_AWAY = 300  # characters of an away message
MAX_REALNAME = 64  # characters of a real name
KEEP_DEPARTED = 1000  # nicks remembered after they are left behind (Hub.departed)
# Seconds apart within which two servers' entries of the same nick given up
# are one departure (each server dates what it heard by its own clock).
DEPARTED_SAME = 5.0

_NOT_STORED = error("not-stored", "the server could not store your message, so nobody "
                    "received it; try again later")


class Member:
    """One connection's identity in the hub."""

    __slots__ = ("nick", "key", "rooms", "active", "registered", "host", "echo", "deliver",
                 "account", "direct", "sink", "express", "express_via", "gone", "_live",
                 "_held", "_replayed", "replay_on_join", "away", "realname", "__weakref__")

    def __init__(self, nick: str, deliver: Callable[[Event], None], sink=None,
                 host: Optional[str] = None):
        self.nick = nick
        self.key = fold(nick)
        # The rooms it is in (a dict as an ordered set, join order) and the
        # one its plain lines go to. Registered (announced, put in the
        # default room once) is not the same as being in a room.
        self.rooms: Dict[Room, None] = {}
        self.active: Optional[Room] = None
        self.registered = False
        self.host = host  # its network address, for address bans (None: none)
        # In JSON mode a sender receives the authoritative copy of its own
        # messages (with id and ts); in text mode it does not.
        self.echo = False
        self.deliver = deliver
        self.account: Optional[str] = None  # folded account name once logged in
        # Room fan-out (twisted_chat.fanout) pushes a turn's pre-encoded room
        # events to ``sink`` (mode, push(bytes)) while ``deliver`` is still
        # the ``direct`` one it was born with; otherwise event by event.
        self.direct = deliver
        self.sink = sink
        # Kept by the sink: while ``express`` is not None, the room's share may
        # be handed to ``express_via`` = (push_express, mode) in bulk with
        # this handle, instead of going through ``sink.push``. Both live here,
        # next to ``deliver``, so the flush reads only the member objects.
        self.express = None
        self.express_via = None
        self.gone = False  # disconnected: queued events skip it
        # Whether joining a room replays its last messages; a client that
        # pages history itself asks for none.
        self.replay_on_join = True
        self.away: Optional[str] = None  # its away message while it is away
        self.realname: Optional[str] = None  # the name it gives as its own, if any
        # While history is being fetched for this member, ``deliver`` is
        # swapped for one that queues events in ``_held`` behind the fetch;
        # ``_live`` keeps the real one. See Hub._replay.
        self._live = None
        self._held: Optional[deque] = None  # of Event and _Replay
        self._replayed: Optional[set] = None  # ids replayed while holding

    def __repr__(self) -> str:
        return f"<Member {self.nick}>"


class Room:
    __slots__ = ("name", "key", "members", "hub", "batch", "presence", "pending", "epoch",
                 "_nicks", "topic", "topic_by", "topic_t", "topic_lock", "moderated",
                 "invite_only", "password", "limit", "op_accounts", "op_guests", "ops",
                 "voiced", "bans", "invited")

    def __init__(self, name: str, hub=None, record: Optional[RoomRecord] = None):
        self.name = name
        self.key = fold(name)
        self.hub = hub  # its ``schedule`` says when the turn's batch flushes
        self.batch = None  # this turn's events (twisted_chat.fanout.Batch)
        self.presence = None  # joins/parts not announced yet (twisted_chat.presence)
        # A dict used as an ordered set: O(1) removal, join order kept.
        self.members: Dict[Member, None] = {}
        # The members' nicks in the same order, kept as they join, leave and
        # rename: every joiner gets ``names``, and building it member by
        # member in Python was a third of a 10,000-client join storm's CPU.
        self._nicks: List[str] = []
        # Messages accepted but not yet stored, and the membership they are
        # addressed to: ``epoch`` is a cell shared by the messages accepted
        # since the last join or part; it stays [None] while the membership
        # is unchanged, and is filled with the old members when it changes.
        self.pending = 0
        self.epoch: list = [None]
        record = record or RoomRecord(self.key, name)
        # What lasts (saved in the store, see Hub._save).
        self.topic, self.topic_by, self.topic_t = record.topic, record.topic_by, record.topic_t
        self.topic_lock, self.moderated = record.topic_lock, record.moderated
        self.invite_only, self.password, self.limit = (record.invite_only, record.password,
                                                       record.limit)
        self.op_accounts = set(record.ops)
        self.bans = list(record.bans)  # (entry, nick, by, t)
        # What lasts while the room has members.
        self.op_guests = set()  # operators without an account
        # The members present who are operators / voiced, in join order:
        # names lists them for every joiner, so they are kept, not searched.
        self.ops: Dict[Member, None] = {}
        self.voiced: Dict[Member, None] = {}
        self.invited = set()  # members invited and not yet joined

    def is_op_account(self, account: Optional[str], hub) -> bool:
        return account is not None and (account in self.op_accounts or account in hub.admins)

    def nicks(self) -> List[str]:
        """The members' nicks, in join order (a copy)."""
        return list(self._nicks)

    def record(self) -> RoomRecord:
        return RoomRecord(self.key, self.name, self.topic, self.topic_by, self.topic_t,
                          self.topic_lock, self.moderated, self.invite_only, self.password,
                          self.limit, tuple(sorted(self.op_accounts)), tuple(self.bans))

    def changing(self) -> None:
        """The membership is about to change: pin it for pending messages."""
        if self.pending:
            self.epoch[0] = list(self.members)
            self.epoch = [None]

    def broadcast(self, event: Event, sender: Optional[Member] = None) -> None:
        """Deliver ``event`` to every member; ``sender`` gets it only if it echoes.

        Delivery is coalesced per turn (see :mod:`twisted_chat.fanout`).
        """
        fanout.broadcast(self, event, sender)


@implementer(IHistoryStore)
class MemoryHistory:
    """The history seam with no storage: it only hands out increasing ids.

    ``append`` calls ``done(id)`` once the record is stored; a durable store
    (:mod:`twisted_chat.history`) calls it later, after its group commit,
    never out of order. This one keeps nothing, so nothing is replayed.
    """

    last_id_at_start = 0

    def __init__(self):
        self._last_id = 0

    def append(self, record: tuple, done: Callable[[int], None], failed=None) -> None:
        self._last_id += 1
        done(self._last_id)

    def recent(self, room: str, limit: int):
        return succeed([])

    def before(self, room: str, before_id: int, limit: int):
        return succeed([])

    def page(self, room: str, limit: int, **bounds):
        return succeed([])

    def load_rooms(self):
        return succeed({})

    def save_room(self, record):
        return succeed(None)


class _Step:
    """One place in the hub's output order; ``run`` is None while it waits
    for the store."""

    __slots__ = ("run",)

    def __init__(self, run=None):
        self.run = run


class _Said:
    """A room message waiting for its store: its place in the hub's output
    order (a step: ``run`` is None until stored) and all it needs then.

    One object per message, not a handful of closures and cells: a busy
    server holds thousands of these until their group commit, and the
    garbage collector walks every one of them at each collection.
    """

    __slots__ = ("hub", "member", "room", "epoch", "nick", "account", "text", "t", "action",
                 "event", "msg_id", "run")

    def __init__(self, hub, member, room, text, t, action):
        self.hub, self.member, self.room = hub, member, room
        self.epoch = room.epoch
        self.nick, self.text, self.t, self.action = member.nick, text, t, action
        self.account = member.account  # the sender's when it spoke (never rendered as is)
        self.event = self.msg_id = None
        self.run = None

    def stored(self, msg_id: int) -> None:
        self.msg_id = msg_id
        room = self.room
        room.pending -= 1
        fields = {"id": msg_id, "ts": None, "room": room.name, "nick": self.nick,
                  "text": self.text}
        if self.action:
            fields["action"] = True
        if self.account is not None:
            fields["_account"] = self.account
        self.event = Event.timed("message", self.t, **fields)
        self.hub._ready(self, self._send)

    def _send(self) -> None:
        member, room, event = self.member, self.room, self.event
        self.hub._sent_id = self.msg_id
        self.hub.recent.said(room, self.msg_id, self.t, self.nick, self.text, self.action)
        presence.before(self.hub, room, self.nick)  # others learn of the sender first
        recipients = self.epoch[0]
        if recipients is None:
            # Nobody came or went since: the room's own (coalesced) fan-out.
            room.broadcast(event, sender=member)
            return
        for m in recipients:
            if m is not member and not m.gone:
                m.deliver(event)
        # The sender's acknowledgement (JSON mode), wherever it is now; a
        # sender who has disconnected meanwhile simply gets none.
        if member.echo and not member.gone:
            member.deliver(event)

    def not_stored(self) -> None:
        self.room.pending -= 1
        self.hub._ready(self, self._refuse)

    def _refuse(self) -> None:
        if not self.member.gone:
            self.member.deliver(_NOT_STORED)


class _Elsewhere:
    """A private message's recipient on another server of the cluster: it
    is told there; here it only lends its nick to the sender's copy."""

    __slots__ = ("nick",)
    gone = True

    def __init__(self, nick: str):
        self.nick = nick


class _Replay:
    """One pending history fetch for a member: rows is None until it arrives."""

    __slots__ = ("room", "on_join", "limit", "before", "rows", "failed", "label")

    def __init__(self, room, on_join, limit, before, label=None):
        self.room, self.on_join, self.limit, self.before = room, on_join, limit, before
        self.rows = None
        self.failed = False
        self.label = label  # the asker's name for it, repeated in its history-end


class Hub:
    """All members and rooms of one chat server."""

    def __init__(
        self,
        server_name: str = "twisted-chat",
        motd: Optional[str] = None,
        default_room: str = "lobby",
        clock: Callable[[], float] = time.time,
        history=None,
        reserved: Optional[Callable[[str], bool]] = None,
        guests: bool = True,
        replay: int = DEFAULT_REPLAY,
        admins=(),
        max_rooms: int = DEFAULT_MAX_ROOMS,
    ):
        self.server_name = server_name
        self.motd = motd
        self.default_room = valid_room(default_room)
        self.default_key = fold(self.default_room)
        self.clock = clock
        self.history = history if history is not None else MemoryHistory()
        self.replay = min(max(replay, 0), HISTORY_CAP)  # messages replayed on join
        # Each room's last messages, so that joiners share one replay (none
        # without a store: MemoryHistory replays nothing).
        keeps = not isinstance(self.history, MemoryHistory)
        self.recent = RecentMessages(self.replay if keeps else 0, clock=self.clock)
        self.members: Dict[str, Member] = {}  # folded nick -> member
        self.registered_count = 0  # of them, those registered (IRC's LUSERS asks at each welcome)
        # The most registered at once here, and in the whole chat as far as
        # this server knew, since it started (IRC's 265 and 266).
        self.peak_count = self.peak_users = 0
        self.rooms: Dict[str, Room] = {}  # folded name -> room
        # Rooms' lasting state as last saved (folded key -> RoomRecord),
        # also for rooms nobody is in: a room that comes back gets it back.
        self.saved: Dict[str, RoomRecord] = {}
        self.admins = frozenset(fold(a) for a in admins)  # accounts: operators everywhere
        self.max_rooms = max_rooms
        self._guests = 0
        # Accounts: reserved(folded nick) says whether the nick has an account;
        # without guests, a member must log in before it may be seen or heard.
        self.reserved = reserved or (lambda key: False)
        self.guests = guests
        # schedule(room): flush room's batch at the end of this turn (the
        # protocol factory sets it); None delivers at once.
        self.schedule: Optional[Callable[[Room], None]] = None
        # Big rooms announce joins/parts in batches (twisted_chat.presence);
        # call_later(seconds, f, *args) is the protocol factory's clock.
        self.presence_threshold = presence.DEFAULT_THRESHOLD
        self.presence_interval = presence.DEFAULT_INTERVAL
        self.call_later = None
        self._queue = deque()  # of _Step: output waiting behind unstored messages
        # The id of the last room message that went out: every message with
        # a lower id has gone out too (ids follow the output order), every
        # later one is still to come, so a replay asked for now reads up to it.
        self._sent_id: Optional[int] = None
        self._draining = False
        self.counts = Counts()  # what the server did, for its metrics
        # Nicks given up (renamed from, or gone), newest last, a bounded few:
        # (folded nick, nick, realname, account, t). See departed().
        self._departed = deque(maxlen=KEEP_DEPARTED)
        # One of a cluster (twisted_chat.cluster.members): told of joins,
        # parts, quits and renames, asked about nicks and members of other
        # servers. None for a server alone: none of its hooks run.
        self.cluster = None
        self.guest_prefix = "guest"
        self._room(self.default_room)

    def load_rooms(self):
        """Read the rooms' lasting state from the store (once, at start)."""
        def loaded(records):
            self.saved.update(records)
            for key, room in list(self.rooms.items()):
                record = records.get(key)
                if record is not None and not room.members:
                    self.rooms[key] = Room(room.name, self, record)
            return records

        def failed(failure):
            log.error("rooms: reading the saved rooms failed: {error}",
                      error=failure.getErrorMessage())

        load = getattr(self.history, "load_rooms", None)
        if load is None:  # a store that keeps no rooms
            return succeed({})
        return load().addCallbacks(loaded, failed)

    # -- connections ---------------------------------------------------------

    def connect(self, deliver: Callable[[Event], None], sink=None,
                host: Optional[str] = None) -> Member:
        """A new connection: reserve a guest nick; it is not in any room yet."""
        member = Member(self._guest_nick(), deliver, sink, host)
        self.members[member.key] = member
        return member

    def welcome(self, member: Member) -> Event:
        fields = {
            "nick": member.nick,
            "server": self.server_name,
            "version": __version__,
            "protocol": PROTOCOL,
        }
        if self.motd:
            fields["motd"] = self.motd
        return Event("welcome", fields)

    def users(self) -> int:
        """Registered members of the whole chat: this server's and, in a
        cluster, the other servers' (O(servers): LUSERS asks at each welcome)."""
        if self.cluster is None:
            return self.registered_count
        return self.registered_count + self.cluster.users()

    def rooms_formed(self) -> int:
        """Rooms of the whole chat: this server's (the default room
        included) and, in a cluster, those with members on other servers
        only (kept as a count: LUSERS asks at each welcome)."""
        if self.cluster is None:
            return len(self.rooms)
        return len(self.rooms) + self.cluster.rooms_elsewhere()

    def counted(self) -> None:
        """A member registered here, or came on another server: the peaks."""
        if self.registered_count > self.peak_count:
            self.peak_count = self.registered_count
        users = self.users()
        if users > self.peak_users:
            self.peak_users = users

    def may_appear(self, member: Member) -> bool:
        """Whether ``member`` may be seen or heard by others: on a server
        without guests, only once it has logged in."""
        return self.guests or member.account is not None

    def check_guest(self, member: Member) -> None:
        """Raise login-required if ``member`` may not yet do anything others see."""
        if not self.may_appear(member):
            raise ChatError("login-required", "this server has no guests: log in first")

    def register(self, member: Member) -> None:
        """Announce the member: it joins the default room, once (and not as
        a guest on a server without guests)."""
        if not member.registered and self.may_appear(member):
            member.registered = True
            self.registered_count += 1
            self.counted()
            if not member.rooms:
                self._join(member, self._room(self.default_room), None)

    def disconnect(self, member: Member, reason: str = "disconnected") -> None:
        """The connection is gone (``reason``: ``quit``, ``quit: TEXT`` or
        ``disconnected``): everybody who shares a room with it hears once."""
        if member.gone:
            return
        if self.cluster is not None:
            self.cluster.gone(member, reason)
        if member.rooms:
            event = Event.timed("quit", self.clock(), nick=member.nick, ts=None,
                                reason=reason)
            told = []
            for room in list(member.rooms):
                if presence.batched(self, room):
                    presence.left(self, room, member.nick)
                else:
                    told.append(room)
            if told:
                self._to_rooms(told, event)
            else:
                self.send(member, event)  # its own, as in any room
            for room in list(member.rooms):
                self._remove(member, room)
        if self.members.get(member.key) is member:
            del self.members[member.key]
        if member.registered:
            self.registered_count -= 1
            self._left_behind(member, member.nick)
        member.gone = True
        for room in self.rooms.values():
            room.invited.discard(member)
        if member._held is not None:
            # Pending replays are moot, and so is what was held for it.
            member.deliver = member._live
            member._held = member._live = member._replayed = None

    # -- nicks and accounts ----------------------------------------------------

    def set_nick(self, member: Member, name: str, answered=None) -> None:
        """Rename ``member`` to ``name``. In a cluster the rename waits for
        the nick's claim; ``answered(ok)``, if given, is called once it is
        known (ok False: taken elsewhere, and told to ``answered`` only)."""
        nick = valid_nick(name)
        key = fold(nick)
        holder = self.members.get(key)
        if holder is not None and holder is not member:
            raise ChatError("nick-taken", f"the nick {nick} is taken")
        if key != member.account and self.reserved(key):
            raise ChatError("nick-reserved", f"the nick {nick} belongs to an account; "
                            "its owner logs in to use it")
        if nick == member.nick:
            self.send(member, Event("info", {"message": f"you are already {nick}"}))
            if answered is not None:
                answered(True)
            return
        if self.cluster is not None and key != member.key:
            # Unique across the cluster: the rename waits for the claim.
            if self.cluster.holder(key) is not None:
                raise ChatError("nick-taken", f"the nick {nick} is taken")
            if answered is None:
                self.cluster.claim(member, nick, self._claimed)
            else:
                self.cluster.claim(member, nick, lambda m, n, ok: self._claimed(m, n, ok,
                                                                                answered))
            return
        self._rename(member, nick)
        if answered is not None:
            answered(True)

    def _claimed(self, member: Member, nick: str, ok: bool, answered=None) -> None:
        """The cluster's answer to a claim of ``nick`` for ``member``."""
        if member.gone:
            return
        holder = self.members.get(fold(nick))
        if not ok or (holder is not None and holder is not member):
            if answered is not None:
                answered(False)
            else:
                self.send(member, error("nick-taken", f"the nick {nick} is taken"))
            return
        self._rename(member, nick)
        if answered is not None:
            answered(True)

    def login(self, member: Member, nick: str) -> None:
        """``member`` proved it owns the account ``nick``: it takes that nick,
        and whoever else holds it becomes a guest."""
        key = fold(nick)
        member.account = key
        for room in member.rooms:  # an operator by account, or an admin, now
            if room.is_op_account(key, self) and member not in room.ops:
                room.ops[member] = None
                if self.cluster is not None:
                    self.cluster.marked(member, room)
        holder = self.members.get(key)
        if holder is not None and holder is not member:
            self.yield_nick(holder, nick)
        elif holder is None and self.cluster is not None \
                and self.cluster.holder(key) is not None:
            # Held on another server: that server renames its member.
            self.cluster.act("yield", None, self.cluster.holder(key), nick, None)
        if nick != member.nick:
            self._rename(member, nick)
        else:
            self.register(member)
        event = None
        if member.rooms:
            # Who shares a room with it learns the account (as the nick, once each).
            event = Event.timed("account", self.clock(), nick=member.nick, account=key)
            self._to_rooms(list(member.rooms), event, exclude=member)
        if self.cluster is not None:
            self.cluster.account(member, event)

    def yield_nick(self, holder: Member, nick: str) -> None:
        """``holder`` loses its nick to the account ``nick`` that logged in
        (here or on another server): it becomes a guest."""
        self._rename(holder, self._guest_nick())
        self.send(holder, Event("info", {
            "message": f"{nick} logged in to its account; you are now {holder.nick}"}))

    def _rename(self, member: Member, nick: str) -> None:
        key = fold(nick)
        old = member.nick
        if member.registered:
            self._left_behind(member, old)
        del self.members[member.key]
        member.nick, member.key = nick, key
        self.members[key] = member
        event = Event.timed("nick", self.clock(), old=old, new=nick)
        if self.cluster is not None:
            self.cluster.renamed(member, old, event)
        if member.rooms:
            for room in member.rooms:
                nicks = room._nicks
                nicks[nicks.index(old)] = nick
                presence.before(self, room, old)
            self._to_rooms(list(member.rooms), event)
        else:
            self.send(member, event)
            self.register(member)

    def _left_behind(self, member: Member, nick: str) -> None:
        self._departed.append((fold(nick), nick, member.realname, member.account,
                               self.clock()))

    def departed_elsewhere(self, nick: str, realname: Optional[str],
                           account: Optional[str]) -> None:
        """A member of another server gave ``nick`` up (WHOWAS, cluster-wide)."""
        self._departed.append((fold(nick), nick, realname, account, self.clock()))

    def departures(self) -> list:
        """The nicks given up that this server remembers, oldest first: the
        entries of departed(), for a server that joins the cluster."""
        return list(self._departed)

    def learn_departures(self, entries) -> None:
        """Older nicks given up, from another server (for a server that has
        just joined the cluster): they go before ours, without those we
        heard of ourselves meanwhile."""
        ours = list(self._departed)
        heard = {entry[:4]: entry[4] for entry in ours}
        older = [tuple(entry) for entry in entries
                 if abs(heard.get(tuple(entry[:4]), -1e9) - entry[4]) > DEPARTED_SAME]
        self._departed.clear()
        self._departed.extend(older)
        self._departed.extend(ours)  # (the deque drops the oldest beyond its length)

    def departed(self, nick: str, limit: int = 5) -> list:
        """Who last had ``nick`` and gave it up (renamed, or gone), newest
        first, at most ``limit`` of the last KEEP_DEPARTED: (nick, realname,
        account, t) tuples."""
        key = fold(nick)
        found = []
        for entry in reversed(self._departed):
            if entry[0] == key:
                found.append(entry[1:])
                if len(found) >= limit:
                    break
        return found

    def set_realname(self, member: Member, text: Optional[str], quiet: bool = False) -> None:
        """``member``'s real name, cleaned like any text (no control
        characters, at most MAX_REALNAME characters; blank: none). Unless
        ``quiet`` (a name given as one connects), a ``realname`` event goes
        to the member and to everybody who shares a room with it, once each."""
        member.realname = strip_controls(text or "").strip()[:MAX_REALNAME] or None
        if quiet:
            if self.cluster is not None:
                self.cluster.realname(member, None)
            return
        event = Event.timed("realname", self.clock(), nick=member.nick,
                            realname=member.realname)
        if member.rooms:
            self._to_rooms(list(member.rooms), event)  # the member among them
        else:
            self.send(member, event)
        if self.cluster is not None:
            self.cluster.realname(member, event if member.rooms else None)

    def set_away(self, member: Member, message: Optional[str]) -> None:
        """Mark ``member`` away with ``message`` (None or blank: back again).

        The message is cleaned like any text (no control characters, at
        most MAX_AWAY characters). An ``away`` event (``nick``, ``message``:
        None when back) goes to the member itself and, when its state
        changes, to everybody who shares a room with it, once each, as a
        nick change does."""
        text = strip_controls(message or "").strip()[:MAX_AWAY] or None
        changed = text != member.away
        member.away = text
        event = Event.timed("away", self.clock(), nick=member.nick, message=text)
        if changed and member.rooms:
            self._to_rooms(list(member.rooms), event)  # the member among them
        else:
            self.send(member, event)
        if changed and self.cluster is not None:
            self.cluster.away(member, event if member.rooms else None)

    # -- rooms -------------------------------------------------------------------

    def join(self, member: Member, name: str, key: Optional[str] = None) -> None:
        self.check_guest(member)
        name = valid_room(name)
        room = self.rooms.get(fold(name))
        if room is not None and room in member.rooms:
            member.active = room  # already in: it becomes the active room
            self.send(member, self._names(room))
            if room.topic:
                self.send(member, self._topic_event(room))
            return
        if len(member.rooms) >= self.max_rooms:
            raise ChatError("too-many-rooms", f"you are in {len(member.rooms)} rooms, the "
                            "most allowed; leave one first")
        if room is None:
            room = self._room(name)
        try:
            self._admit(member, room, key)
        except ChatError:
            if not room.members and room.key != self.default_key:
                self._drop_room(room)  # it was made for this attempt only
            raise
        if not member.registered:
            member.registered = True
            self.registered_count += 1
            self.counted()
        self._join(member, room, key)

    def _admit(self, member: Member, room: Room, key: Optional[str]) -> None:
        """Raise the ChatError that keeps ``member`` out of ``room``, if any."""
        if self.is_admin(member) or room.is_op_account(member.account, self):
            return
        if self._banned(member, room) is not None:
            raise ChatError("banned", f"you are banned from {room.name}")
        invited = member in room.invited or (self.cluster is not None
                                             and self.cluster.invited(member, room.key))
        if room.invite_only and not invited:
            raise ChatError("invite-only", f"{room.name} is invite-only: an operator can "
                            "invite you")
        if room.limit is not None and len(room.members) >= room.limit:
            raise ChatError("room-full", f"{room.name} is full ({room.limit} members)")
        if room.password is not None and key != room.password and not invited:
            raise ChatError("bad-key", f"{room.name} needs its key")

    def _join(self, member: Member, room: Room, key: Optional[str]) -> None:
        first = not room.members
        if first and self.cluster is not None and self.cluster.nicks(room.key):
            first = False  # its first members are on other servers
        if first and room.key != self.default_key and not room.op_accounts:
            # The first to come to a room nobody runs runs it.
            if member.account is not None:
                room.op_accounts.add(member.account)
                self._save(room)
            else:
                room.op_guests.add(member)
        room.invited.discard(member)
        batched = presence.batched(self, room)
        room.changing()
        fanout.entering(room, member)
        room.members[member] = None
        room._nicks.append(member.nick)
        if self.is_op(member, room):
            room.ops[member] = None
        member.rooms[room] = None
        member.active = room
        event = Event.timed("join", self.clock(), room=room.name, nick=member.nick)
        if member.account is not None:
            event.fields["_account"] = member.account  # the joiner's, as it joined
        if member.realname is not None:
            event.fields["_realname"] = member.realname
        if self.cluster is not None:
            self.cluster.joined(member, room, event)
        if batched:
            self.send(member, event)  # its own join now; the room's in a presence batch
            presence.joined(self, room, member.nick)
        else:
            self._broadcast(room, event)
            if member.away is not None:
                # The room learns that the joiner is away, as if it had just gone.
                self._to_rooms([room], Event.timed("away", self.clock(), nick=member.nick,
                                                   message=member.away), exclude=member)
        self.send(member, self._names(room))
        if room.topic:
            self.send(member, self._topic_event(room))
        if self.replay and member.replay_on_join:
            # Fetched only once every message accepted before this join is
            # stored: the replay then holds all of them, and every later one
            # reaches the joiner live.
            self.in_order(lambda: self._replay(member, room, True, self.replay))

    def part(self, member: Member, name: Optional[str] = None,
             reason: Optional[str] = None) -> None:
        room = self._my_room(member, name)
        self._leave(member, room, f"left: {reason}" if reason else "left")

    def say(self, member: Member, text: str, room: Optional[str] = None,
            action: bool = False) -> None:
        self.check_guest(member)
        self.register(member)
        target = self._my_room(member, room)
        self._may_speak(member, target)
        t = self.clock()
        # The room as it is now receives it, whenever the store is done.
        said = _Said(self, member, target, text, t, action)
        target.pending += 1
        self._queue.append(said)
        self.history.append(room_message(target.key, target.name, said.nick, text, t, action),
                            said.stored, said.not_stored)

    def _may_speak(self, member: Member, room: Room) -> None:
        if room.moderated or room.bans:
            if self.is_op(member, room) or member in room.voiced:
                return
            if self._banned(member, room) is not None:
                raise ChatError("banned", f"you are banned from {room.name}")
            if room.moderated:
                raise ChatError("moderated", f"{room.name} is moderated: only operators and "
                                "voiced members speak")

    def private(self, member: Member, target: str, text: str) -> None:
        self.check_guest(member)
        self.register(member)
        recipient = self.members.get(fold(target))
        if recipient is None:
            elsewhere = self.cluster.holder(fold(target)) if self.cluster is not None else None
            if elsewhere is None:
                raise ChatError("no-such-nick", f"nobody is called {target}")
            # On another server of the cluster: it delivers it (deliver_remote).
            recipient = _Elsewhere(elsewhere)
        sender, t, account = member.nick, self.clock(), member.account
        record = private_message(sender, recipient.nick, text, t)
        step = self._wait()

        def accepted(msg_id: int) -> None:
            event = Event.timed("private", t, id=msg_id, ts=None, **{
                "from": sender, "to": recipient.nick, "text": text})
            if account is not None:
                event.fields["_account"] = account

            def send():
                if not recipient.gone:
                    recipient.deliver(event)
                if member.echo and member is not recipient and not member.gone:
                    member.deliver(event)

            self._ready(step, send)

        self.history.append(record, accepted, self._not_stored(member, step))

    def who(self, member: Member, name: Optional[str] = None) -> None:
        if name is None:
            room = member.active or self.rooms[self.default_key]
            self.send(member, self._names(room))
            return
        room_name = valid_room(name)
        room = self.rooms.get(fold(room_name))
        if room is not None:
            self.send(member, self._names(room))
        else:
            nicks, ops, voiced = (self.cluster.names(fold(room_name))
                                  if self.cluster is not None else ([], [], []))
            self.send(member, Event("names", {"room": room_name, "nicks": nicks, "ops": ops,
                                              "voiced": voiced}))

    def list_rooms(self, member: Member) -> None:
        if self.cluster is not None:
            counts = self.cluster.rooms()  # folded key -> [name, members elsewhere]
            for room in self.rooms.values():
                counts.setdefault(room.key, [room.name, 0])[1] += len(room.members)
            rooms = [{"name": name, "members": n} for _, (name, n) in sorted(counts.items())]
        else:
            rooms = [
                {"name": room.name, "members": len(room.members)}
                for room in sorted(self.rooms.values(), key=lambda r: r.key)
            ]
        self.send(member, Event("rooms", {"rooms": rooms}))

    # -- topics and moderation -------------------------------------------------

    def topic(self, member: Member, name: str, text: Optional[str] = None) -> None:
        """``text`` None asks for the topic; "" clears it."""
        room = self._existing(name)
        if text is None:
            self.send(member, self._topic_event(room))
            return
        self.check_guest(member)
        if room not in member.rooms:
            raise ChatError("not-in-room", f"you are not in {room.name}")
        if room.topic_lock and not self.is_op(member, room):
            raise ChatError("not-operator", f"only operators of {room.name} set its topic")
        room.topic, room.topic_by, room.topic_t = text, member.nick, self.clock()
        self._save(room)
        event = self._topic_event(room)
        if self.cluster is not None:
            self.cluster.room_event(room, event)
        self._broadcast(room, event)

    def op(self, member: Member, name: str, nick: str, on: bool = True) -> None:
        room, target = self._operate(member, name, nick)
        if target is None:
            return self.cluster.act("op", room, nick, member.nick, on)
        self._op(member.nick, room, target, on)

    def _op(self, by: str, room: Room, target: Member, on: bool) -> None:
        if on:
            if target.account is not None:
                room.op_accounts.add(target.account)
                self._save(room)
            else:
                room.op_guests.add(target)
            room.ops[target] = None
        else:
            room.op_guests.discard(target)
            if target.account in room.op_accounts:
                room.op_accounts.discard(target.account)
                self._save(room)
            # An admin stays one (room.ops itself does not count: it is
            # what is being undone).
            if not room.is_op_account(target.account, self):
                room.ops.pop(target, None)
        if self.cluster is not None:
            self.cluster.marked(target, room)  # before its event: names agree with it
        self._mode(by, room, "op", on, nick=target.nick)

    def deop(self, member: Member, name: str, nick: str) -> None:
        self.op(member, name, nick, on=False)

    def voice(self, member: Member, name: str, nick: str, on: bool = True) -> None:
        room, target = self._operate(member, name, nick)
        if target is None:
            return self.cluster.act("voice", room, nick, member.nick, on)
        self._voice(member.nick, room, target, on)

    def _voice(self, by: str, room: Room, target: Member, on: bool) -> None:
        if on:
            room.voiced[target] = None
        else:
            room.voiced.pop(target, None)
        if self.cluster is not None:
            self.cluster.marked(target, room)
        self._mode(by, room, "voice", on, nick=target.nick)

    def devoice(self, member: Member, name: str, nick: str) -> None:
        self.voice(member, name, nick, on=False)

    def kick(self, member: Member, name: str, nick: str, reason: Optional[str] = None) -> None:
        room, target = self._operate(member, name, nick)
        if target is None:
            return self.cluster.act("kick", room, nick, member.nick, reason)
        self._kick(member.nick, room, target, reason)

    def _kick(self, by: str, room: Room, target: Member, reason: Optional[str]) -> None:
        fields = {"room": room.name, "nick": target.nick, "by": by,
                  "reason": reason or ""}
        event = Event.timed("kick", self.clock(), ts=None, **fields)
        if self.cluster is not None:
            self.cluster.left(target, room, event)
        self._broadcast(room, event)
        if presence.batched(self, room):
            presence.left(self, room, target.nick)
        self._remove(target, room)

    def ban(self, member: Member, name: str, nick: Optional[str] = None) -> None:
        """Ban ``nick`` (by account if logged in, else by address); without
        ``nick``, list the bans."""
        room = self._existing(name)
        self._require_op(member, room)
        if nick is None:
            bans = [{"entry": e, "nick": n, "by": b, "ts": rfc3339(t)}
                    for e, n, b, t in room.bans]
            self.send(member, Event("bans", {"room": room.name, "bans": bans}))
            return
        target = self.members.get(fold(nick))
        if target is None:
            if self.cluster is not None and self.cluster.holder(fold(nick)) is not None:
                return self.cluster.act("ban", room, nick, member.nick, None)
            raise ChatError("no-such-nick", f"nobody is called {nick}")
        self._ban(member.nick, room, target)

    def _ban(self, by: str, room: Room, target: Member) -> None:
        if target.account is not None:
            entry = f"account:{target.account}"
        elif target.host is not None:
            entry = f"address:{target.host}"
        else:
            raise ChatError("usage", f"{target.nick} has neither an account nor an address "
                            "to ban")
        if not any(b[0] == entry for b in room.bans):
            room.bans.append((entry, target.nick, by, self.clock()))
            self._save(room)
        self._mode(by, room, "ban", True, nick=target.nick)

    def unban(self, member: Member, name: str, entry: str) -> None:
        room = self._existing(name)
        self._require_op(member, room)
        for i, ban in enumerate(room.bans):
            if ban[0] == entry:
                del room.bans[i]
                self._save(room)
                self._mode(member.nick, room, "ban", False, nick=ban[1])
                return
        raise ChatError("no-such-ban", f"{room.name} has no ban {entry}")

    def invite(self, member: Member, nick: str, name: str) -> None:
        room = self._existing(name)
        self.check_guest(member)
        if room not in member.rooms:
            raise ChatError("not-in-room", f"you are not in {room.name}")
        if room.invite_only:
            self._require_op(member, room)
        target = self.members.get(fold(nick))
        if target is None:
            remote = self.cluster.member(fold(nick)) if self.cluster is not None else None
            if remote is None:
                raise ChatError("no-such-nick", f"nobody is called {nick}")
            if room.key in remote.rooms:
                raise ChatError("usage", f"{remote.nick} is already in {room.name}")
            # On another server: the invitation is recorded there, and told.
            self.cluster.act("invite", room, remote.nick, member.nick, room.name)
            self.send(member, Event("info", {"message": f"invited {remote.nick} to "
                                                        f"{room.name}"}))
            return
        if room in target.rooms:
            raise ChatError("usage", f"{target.nick} is already in {room.name}")
        room.invited.add(target)
        self.send(target, Event.timed("invite", self.clock(), room=room.name, by=member.nick))
        self.send(member, Event("info", {"message": f"invited {target.nick} to {room.name}"}))

    def set_flag(self, member: Member, name: str, flag: str, value) -> None:
        room = self._existing(name)
        self._require_op(member, room)
        attr = {"topic-lock": "topic_lock", "moderated": "moderated",
                "invite-only": "invite_only", "key": "password", "limit": "limit"}[flag]
        setattr(room, attr, value)
        self._save(room)
        fields = {}
        if flag == "limit" and value is not None:
            fields["value"] = value
        self._mode(member.nick, room, flag, value is not None and value is not False,
                   **fields)

    def flags(self, member: Member, name: str) -> None:
        room = self._existing(name)
        op = self.is_op(member, room)
        self.send(member, Event("flags", {
            "room": room.name, "topic-lock": room.topic_lock, "moderated": room.moderated,
            "invite-only": room.invite_only,
            "key": room.password if op else room.password is not None,
            "limit": room.limit}))

    # -- who may do what -------------------------------------------------------

    def is_admin(self, member: Member) -> bool:
        return member.account is not None and member.account in self.admins

    def is_op(self, member: Member, room: Room) -> bool:
        return (member in room.ops or member in room.op_guests
                or room.is_op_account(member.account, self))

    def _require_op(self, member: Member, room: Room) -> None:
        if not self.is_op(member, room):
            raise ChatError("not-operator", f"you are not an operator of {room.name}")

    def _operate(self, member: Member, name: str, nick: str):
        """The room and the target member of an operator's command."""
        room = self._existing(name)
        self._require_op(member, room)
        target = self.members.get(fold(nick))
        if target is None:
            if self.cluster is not None and self.cluster.holder(fold(nick)) is not None:
                if fold(nick) not in map(fold, self.cluster.nicks(room.key)):
                    raise ChatError("not-in-room", f"{nick} is not in {room.name}")
                return room, None  # on another server: the caller asks it to act
            raise ChatError("no-such-nick", f"nobody is called {nick}")
        if room not in target.rooms:
            raise ChatError("not-in-room", f"{target.nick} is not in {room.name}")
        return room, target

    def _banned(self, member: Member, room: Room):
        for ban in room.bans:
            entry = ban[0]
            if entry.startswith("account:"):
                if member.account is not None and entry[8:] == member.account:
                    return ban
            elif member.host is not None and entry == f"address:{member.host}":
                return ban
        return None

    def _existing(self, name: str) -> Room:
        name = valid_room(name)
        room = self.rooms.get(fold(name))
        if room is None:
            raise ChatError("no-such-room", f"there is no room {name}")
        return room

    def _my_room(self, member: Member, name: Optional[str]) -> Room:
        """The room ``name`` (or the active one) if the member is in it."""
        if name is None:
            if member.active is None:
                raise ChatError("not-in-room", "you are in no room: join one first")
            return member.active
        room = self._existing(name)
        if room not in member.rooms:
            raise ChatError("not-in-room", f"you are not in {room.name}")
        return room

    def _mode(self, by: str, room: Room, mode: str, on: bool, **fields) -> None:
        event = Event.timed("mode", self.clock(), room=room.name, by=by, ts=None, mode=mode,
                            on=on, **fields)
        if self.cluster is not None:
            self.cluster.room_event(room, event)
        self._broadcast(room, event)

    def _names(self, room: Room) -> Event:
        nicks = room.nicks()
        ops = [m.nick for m in room.ops]
        voiced = [m.nick for m in room.voiced]
        if self.cluster is not None:
            # The other servers' members, with their marks.
            more, more_ops, more_voiced = self.cluster.names(room.key)
            nicks += more
            ops += more_ops
            voiced += more_voiced
        return Event("names", {"room": room.name, "nicks": nicks, "ops": ops,
                               "voiced": voiced})

    def _topic_event(self, room: Room) -> Event:
        return Event.timed("topic", room.topic_t or self.clock(), room=room.name,
                           topic=room.topic, by=room.topic_by or "", ts=None)

    def _save(self, room: Room) -> None:
        record = room.record()
        if is_default(record):
            self.saved.pop(room.key, None)
        else:
            self.saved[room.key] = record
        if self.cluster is not None:
            self.cluster.saved(record)

        def failed(failure):
            log.error("rooms: saving {room} failed: {error}", room=room.key,
                      error=failure.getErrorMessage())

        save = getattr(self.history, "save_room", None)
        if save is not None:
            save(record).addErrback(failed)

    # -- the cluster (twisted_chat.cluster) --------------------------------------

    def deliver_remote(self, msg_id: int, record: tuple) -> None:
        """A message another server of the cluster stored (``record`` as in
        twisted_chat.history.interface): out to this server's members of its
        room. The cluster calls this in id order, interleaved with this
        server's own messages; so it goes out at once, ahead of local
        messages still waiting for their commit (they will have higher ids).
        """
        kind, key, _, nick, target, text, action, t = record
        # The sender's account (IRC account-tag), as its server last said.
        sender = self.cluster.member(fold(nick))
        account = sender.account if sender is not None else None
        if kind != "message":
            recipient = self.members.get(fold(target))
            if recipient is not None and not recipient.gone:
                event = Event.timed("private", t, id=msg_id, ts=None, **{
                    "from": nick, "to": recipient.nick, "text": text})
                if account is not None:
                    event.fields["_account"] = account
                recipient.deliver(event)
            return
        self._sent_id = msg_id
        room = self.rooms.get(key)
        if room is None or not room.members:
            return
        self.recent.said(room, msg_id, t, nick, text, action)
        fields = {"id": msg_id, "ts": None, "room": room.name, "nick": nick, "text": text}
        if action:
            fields["action"] = True
        if account is not None:
            fields["_account"] = account
        room.broadcast(Event.timed("message", t, **fields))

    def remote_event(self, keys, event: Event, nick: Optional[str] = None,
                     joined: Optional[bool] = None) -> None:
        """An event of a member of another server (a join, part, kick, quit,
        rename) out to this server's members of the rooms ``keys`` (folded),
        each member once; in a big room a join or part (``joined`` True or
        False, of ``nick``) goes in its presence batch instead."""
        rooms = []
        for key in keys:
            room = self.rooms.get(key)
            if room is None or not room.members:
                continue
            if joined is not None and presence.batched(self, room):
                (presence.joined if joined else presence.left)(self, room, nick)
            else:
                rooms.append(room)
        if len(rooms) == 1:
            self._broadcast(rooms[0], event)
        else:
            self._to_rooms(rooms, event)

    def remote_room(self, record: RoomRecord) -> None:
        """Another server saved a room's lasting state: it holds here too
        (its event, if any, comes by remote_event)."""
        if is_default(record):
            self.saved.pop(record.key, None)
        else:
            self.saved[record.key] = record
        room = self.rooms.get(record.key)
        if room is None:
            return
        room.topic, room.topic_by, room.topic_t = record.topic, record.topic_by, record.topic_t
        room.topic_lock, room.moderated = record.topic_lock, record.moderated
        room.invite_only, room.password, room.limit = (record.invite_only, record.password,
                                                       record.limit)
        room.op_accounts = set(record.ops)
        room.bans = list(record.bans)
        for m in room.members:  # operators by account, as the record says now
            was = m in room.ops
            if m in room.op_guests or room.is_op_account(m.account, self):
                room.ops[m] = None
            else:
                room.ops.pop(m, None)
            if was != (m in room.ops):
                self.cluster.marked(m, room)

    def remote_act(self, action: str, key: Optional[str], nick: str, by: str, arg) -> None:
        """An operator on another server acts on ``nick``, a member here
        (its server checked that it may): kick, op, voice, ban, invite; or
        ``by`` logged in there to the account whose nick ``nick`` holds
        here (yield)."""
        target = self.members.get(fold(nick))
        if target is None or target.gone:
            return
        if action == "yield":  # ``by`` logged in to its account, whose nick this is
            self.yield_nick(target, by)
            return
        room = self.rooms.get(key)
        if action == "invite":  # ``arg``: the room's name (it may have nobody here)
            if room is None or room not in target.rooms:
                self.cluster.invite(target, key)
                self.send(target, Event.timed("invite", self.clock(), room=arg, by=by))
            return
        if room is None or room not in target.rooms:
            return
        if action == "kick":
            self._kick(by, room, target, arg)
        elif action == "op":
            self._op(by, room, target, arg)
        elif action == "voice":
            self._voice(by, room, target, arg)
        elif action == "ban":
            self._ban(by, room, target)

    # -- history ---------------------------------------------------------------

    def history_page(self, member: Member, room: Optional[str] = None,
                     limit: Optional[int] = None, before: Optional[int] = None) -> None:
        """``/history [ROOM [N]]`` and ``/history ROOM before ID [N]`` (without
        ROOM: the active room, or the default room before it has one; asking
        does not register)."""
        if room is None:
            target = member.active or self.rooms[self.default_key]
        else:
            target = self._my_room(member, room)
        limit = min(limit or self.replay or DEFAULT_REPLAY, HISTORY_CAP)
        self.in_order(lambda: self._replay(member, target, False, limit, before))

    def history_range(self, member: Member, room: str, how: str, refs=(), limit: int = None,
                      label=None) -> None:
        """A page of ``room``'s history (the member must be in it) around
        references (:mod:`twisted_chat.history.paging`: ``how`` is latest,
        before, after, around or between), delivered as a replay whose
        ``history-end`` carries ``label``. Limited as ``/history`` is."""
        target = self._my_room(member, room)
        if how not in paging.HOWS:
            raise ChatError("usage", f"no way to page history called {how}")
        limit = min(limit or self.replay or DEFAULT_REPLAY, HISTORY_CAP)
        key = target.key

        def fetch(upto):
            return paging.read(self.history, key, how, tuple(refs), limit, upto)

        self.in_order(lambda: self._replay(member, target, False, limit, fetch=fetch,
                                           label=label))

    # -- output order ----------------------------------------------------------

    def in_order(self, thunk: Callable[[], None]) -> None:
        """Run ``thunk`` now, or, if messages are waiting for the store, right
        after they have gone out (so a ``pong`` is a true barrier)."""
        if self._queue:
            self._queue.append(_Step(thunk))
        else:
            thunk()

    def send(self, member: Member, event: Event) -> None:
        """Deliver ``event`` to ``member`` in order (after pending messages,
        and after a pending history replay)."""
        if self._queue:
            self._queue.append(_Step(lambda: member.gone or member.deliver(event)))
        else:
            member.deliver(event)

    def _broadcast(self, room: Room, event: Event) -> None:
        if self._queue:
            self._deliver_all(list(room.members), event)  # the room as it is now
        else:
            room.broadcast(event)

    def _wait(self) -> _Step:
        step = _Step()
        self._queue.append(step)
        return step

    def _ready(self, step: _Step, run: Callable[[], None]) -> None:
        step.run = run
        if self._draining:
            return  # the loop below will get to it
        self._draining = True
        queue = self._queue
        try:
            while queue and queue[0].run is not None:
                step = queue.popleft()
                # A _Said's run is its own bound method: unhooked, the step
                # is freed at once instead of waiting as a cycle for the GC.
                run, step.run = step.run, None
                try:
                    run()
                except Exception:
                    log.failure("delivering hub output")
        finally:
            self._draining = False

    def _not_stored(self, member: Member, step: _Step):
        def failed():
            def tell():
                if not member.gone:
                    member.deliver(_NOT_STORED)
            self._ready(step, tell)
        return failed

    # -- history replay ----------------------------------------------------------

    def _replay(self, member: Member, room: Room, on_join: bool, limit: int,
                before: Optional[int] = None, fetch=None, label=None) -> None:
        """Fetch history for ``member``; deliver it at this point of its stream.

        From now until the fetch has arrived, events for the member are held
        (``deliver`` is swapped), in order, with the fetch as a placeholder;
        then the replayed messages (``history: true``) and a ``history-end``
        take the placeholder's place, and the held events follow, minus
        messages the replay already contained (a message stored while the
        fetch was queued can be in both).
        """
        if member.gone:
            return
        fill = False
        if on_join and before is None and fetch is None and limit == self.replay:
            events = self.recent.replay(room)
            if events is not None:
                # Known without the store: the same events for every joiner.
                _catch_up(member)
                for event in events:
                    member.deliver(event)
                if events:
                    member.deliver(Event("history-end", {
                        "room": room.name, "count": len(events), "limit": limit,
                        "oldest": events[0].fields["id"]}))
                return
            fill = self.recent.fetching(room)
        request = _Replay(room, on_join, limit, before, label)
        _catch_up(member)  # room events owed so far come before the replay
        if member._held is None:
            held = member._held = deque()
            member._live, member._replayed = member.deliver, set()

            def hold(event):
                _catch_up(member)  # keeps room events and direct ones in order
                held.append(event)

            member.deliver = hold
        member._held.append(request)
        # Up to this point of the member's stream and no further: a message
        # stored meanwhile comes live, after the replay, never inside it
        # (the read may run long after it was asked for).
        upto = self._sent_id if self._sent_id is not None else self.history.last_id_at_start
        try:
            if fetch is not None:
                d = fetch(upto)
            else:
                before = upto + 1 if before is None else min(before, upto + 1)
                d = self.history.before(room.key, before, limit)
        except Exception:
            d = fail()  # a read that could not even start: told as any failed read

        def arrived(rows):
            request.rows = rows
            if fill:
                self.recent.fetched(room, rows)
            self._release(member)

        def failed(failure):
            log.error("history: reading {room} failed: {error}", room=room.key,
                      error=failure.getErrorMessage())
            request.rows, request.failed = [], True
            self._release(member)

        d.addCallbacks(arrived, failed)

    def _release(self, member: Member) -> None:
        """Deliver what is held for ``member``, up to a fetch still awaited."""
        held = member._held
        if held is None:
            return  # disconnected meanwhile
        replayed, live = member._replayed, member._live
        while held:
            item = held[0]
            if isinstance(item, _Replay):
                if item.rows is None:
                    return  # still waiting for this one
                held.popleft()
                self._deliver_replay(live, item, replayed)
            else:
                held.popleft()
                if item.type == "message" and item.fields.get("id") in replayed:
                    continue
                live(item)
        member.deliver = live
        member._held = member._live = member._replayed = None

    def _deliver_replay(self, live, request: "_Replay", replayed: set) -> None:
        if request.failed:
            fields = {"code": "history-unavailable", "message": "the history could not be read"}
            if request.label is not None:
                fields["label"] = request.label
            live(Event("error", fields))
            return
        for row in request.rows:
            replayed.add(row.id)
            live(self.recent.event(request.room, row))
        if request.rows or not request.on_join:
            fields = {"room": request.room.name, "count": len(request.rows),
                      "limit": request.limit}
            if request.rows:
                fields["oldest"] = request.rows[0].id
            if request.label is not None:
                fields["label"] = request.label
            live(Event("history-end", fields))

    # -- internals -----------------------------------------------------------

    def _guest_nick(self) -> str:
        while True:
            self._guests += 1
            nick = f"{self.guest_prefix}{self._guests}"
            if fold(nick) not in self.members:
                return nick

    def _room(self, name: str) -> Room:
        key = fold(name)
        room = self.rooms.get(key)
        if room is None:
            room = self.rooms[key] = Room(name, self, self.saved.get(key))
            if self.cluster is not None:
                self.cluster.formed(key)
        return room

    def _to_rooms(self, rooms: List[Room], event: Event, exclude: Optional[Member] = None):
        """``event`` (a nick change, a quit) to everybody in ``rooms``, once
        each, however many of those rooms they share (``exclude`` gets none)."""
        if not rooms:
            return
        if self._queue or exclude is not None or len(rooms) > 1:
            seen = set()
            recipients = []
            for room in rooms:
                for m in room.members:
                    if m not in seen and m is not exclude:
                        seen.add(m)
                        recipients.append(m)
            self._deliver_all(recipients, event)
        else:
            rooms[0].broadcast(event)  # one room: its coalesced fan-out

    def _deliver_all(self, recipients: List[Member], event: Event) -> None:
        if self._queue:
            def send():
                for m in recipients:
                    if not m.gone:
                        m.deliver(event)

            self._queue.append(_Step(send))
        else:
            for m in recipients:
                m.deliver(event)

    def _leave(self, member: Member, room: Room, reason: str) -> None:
        """``member`` leaves ``room`` of its own accord: a ``part``."""
        event = Event.timed("part", self.clock(), room=room.name, nick=member.nick,
                            ts=None, reason=reason)
        if self.cluster is not None:
            self.cluster.left(member, room, event)
        if presence.batched(self, room):
            self.send(member, event)  # the leaver's own part; the room's in a batch
            presence.left(self, room, member.nick)
        else:
            self._broadcast(room, event)  # the leaver included
        self._remove(member, room)

    def _remove(self, member: Member, room: Room) -> None:
        """Take ``member`` out of ``room`` (the events saying so are out)."""
        fanout.catch_up(member)  # what it is owed, up to its leaving
        room.changing()
        del room.members[member]
        room._nicks.remove(member.nick)
        room.ops.pop(member, None)
        room.voiced.pop(member, None)
        del member.rooms[room]
        if member.active is room:
            member.active = next(reversed(member.rooms), None)
        if not room.members:
            # Guests' operator status and invitations last while the room
            # has members (invitations: on any server; the cluster keeps
            # them while it has members elsewhere); what is saved stays in
            # self.saved.
            room.op_guests.clear()
            if self.cluster is not None:
                self.cluster.emptied(room)
            room.invited.clear()
            if room.key != self.default_key:
                self._drop_room(room)
                self.recent.forget(room)
                if room.presence is not None and room.presence.call is not None \
                        and room.presence.call.active():
                    room.presence.call.cancel()
                room.presence = None

    def _drop_room(self, room: Room) -> None:
        del self.rooms[room.key]
        if self.cluster is not None:
            self.cluster.dropped(room.key)


def _catch_up(member: Member) -> None:
    fanout.catch_up(member)
