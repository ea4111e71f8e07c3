"""The chat rules: members, nicks, rooms, and who receives which event.

The hub knows no transport. A connection is represented by a :class:`Member`
whose ``deliver`` callable takes an :class:`~twisted_chat.events.Event`; the
protocol layer supplies that callable and renders the event in its own mode.
Client mistakes raise :class:`~twisted_chat.errors.ChatError`.
"""

import time
from typing import Callable, Dict, Optional

from . import __version__, fanout, presence
from .commands import fold, valid_nick, valid_room
from .errors import ChatError
from .events import Event


# What a member that has not logged in may do on a server without guests:
# nothing that shows it to anybody (mode and ping only shape its own output).
GUEST_COMMANDS = frozenset({"login", "help", "quit", "mode", "ping"})


class Member:
    """One connection's identity in the hub."""

    __slots__ = ("nick", "key", "room", "echo", "deliver", "account", "direct", "sink",
                 "__weakref__")

    def __init__(self, nick: str, deliver: Callable[[Event], None], sink=None):
        self.nick = nick
        self.key = fold(nick)
        self.room: Optional[Room] = None  # None until registered
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

    @property
    def registered(self) -> bool:
        return self.room is not None

    def __repr__(self) -> str:
        return f"<Member {self.nick}>"


class Room:
    __slots__ = ("name", "key", "members", "hub", "batch", "presence")

    def __init__(self, name: str, hub=None):
        self.name = name
        self.key = fold(name)
        self.hub = hub  # its ``schedule`` says when the turn's batch flushes
        self.batch = None  # this turn's events (twisted_chat.fanout.Batch)
        self.presence = None  # joins/parts not announced yet (twisted_chat.presence)
        # A dict used as an ordered set: O(1) removal, join order kept.
        self.members: Dict[Member, None] = {}

    def nicks(self):
        return [m.nick for m in self.members]

    def broadcast(self, event: Event, sender: Optional[Member] = None) -> None:
        """Deliver ``event`` to every member; ``sender`` gets it only if it echoes.

        Delivery is coalesced per turn (see :mod:`twisted_chat.fanout`).
        """
        fanout.broadcast(self, event, sender)


class MemoryHistory:
    """The history seam with no storage: it only hands out increasing ids.

    ``append`` calls ``done(id)`` once the record is stored; a durable store
    may call it later (after its group commit), never out of order.
    """

    def __init__(self):
        self._last_id = 0

    def append(self, record: dict, done: Callable[[int], None]) -> None:
        self._last_id += 1
        done(self._last_id)


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
    ):
        self.server_name = server_name
        self.motd = motd
        self.default_room = valid_room(default_room)
        self.clock = clock
        self.history = history if history is not None else MemoryHistory()
        self.members: Dict[str, Member] = {}  # folded nick -> member
        self.rooms: Dict[str, Room] = {}  # folded name -> room
        self._guests = 0
        # Accounts: reserved(folded nick) says whether the nick has an account;
        # without guests, a member must log in before anything but GUEST_COMMANDS.
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
        self._room(self.default_room)

    # -- connections ---------------------------------------------------------

    def connect(self, deliver: Callable[[Event], None], sink=None) -> Member:
        """A new connection: reserve a guest nick; it is not in any room yet."""
        member = Member(self._guest_nick(), deliver, sink)
        self.members[member.key] = member
        return member

    def welcome(self, member: Member) -> Event:
        fields = {
            "nick": member.nick,
            "server": self.server_name,
            "version": __version__,
        }
        if self.motd:
            fields["motd"] = self.motd
        return Event("welcome", fields)

    def register(self, member: Member) -> None:
        """Join the default room, unless the member is in a room already
        (or is a guest on a server without guests)."""
        if member.room is None and (self.guests or member.account is not None):
            self.join(member, self.default_room)

    def disconnect(self, member: Member, reason: str = "disconnected") -> None:
        if member.room is not None:
            self._leave(member, reason)
        if self.members.get(member.key) is member:
            del self.members[member.key]

    # -- commands ------------------------------------------------------------

    def set_nick(self, member: Member, name: str) -> None:
        nick = valid_nick(name)
        key = fold(nick)
        holder = self.members.get(key)
        if holder is not None and holder is not member:
            raise ChatError("nick-taken", f"the nick {nick} is taken")
        if key != member.account and self.reserved(key):
            raise ChatError("nick-reserved", f"the nick {nick} belongs to an account; "
                            "its owner uses /login")
        if nick == member.nick:
            member.deliver(Event("info", {"message": f"you are already {nick}"}))
            return
        self._rename(member, nick)

    def check_guest(self, member: Member, command: str) -> None:
        """Raise login-required if a guest may not run ``command`` here."""
        if not self.guests and member.account is None and command not in GUEST_COMMANDS:
            raise ChatError("login-required",
                            "this server has no guests: /login NAME PASSWORD first")

    def login(self, member: Member, nick: str) -> None:
        """``member`` proved it owns the account ``nick``: it takes that nick,
        and whoever else holds it becomes a guest."""
        key = fold(nick)
        member.account = key
        holder = self.members.get(key)
        if holder is not None and holder is not member:
            self._rename(holder, self._guest_nick())
            holder.deliver(Event("info", {
                "message": f"{nick} logged in to its account; you are now {holder.nick}"}))
        if nick != member.nick:
            self._rename(member, nick)
        else:
            self.register(member)

    def _rename(self, member: Member, nick: str) -> None:
        key = fold(nick)
        old = member.nick
        del self.members[member.key]
        member.nick, member.key = nick, key
        self.members[key] = member
        event = Event.timed("nick", self.clock(), old=old, new=nick)
        if member.room is not None:
            presence.before(self, member.room, old)
            member.room.broadcast(event)
        else:
            member.deliver(event)
            self.register(member)

    def join(self, member: Member, name: str) -> None:
        room = self._room(valid_room(name))
        if member.room is room:
            member.deliver(Event("names", {"room": room.name, "nicks": room.nicks()}))
            return
        if member.room is not None:
            self._leave(member, "left")
        batched = presence.batched(self, room)
        fanout.entering(room, member)
        room.members[member] = None
        member.room = room
        event = Event.timed("join", self.clock(), room=room.name, nick=member.nick)
        if batched:
            member.deliver(event)  # its own join now; the room's in a presence batch
            presence.joined(self, room, member.nick)
        else:
            room.broadcast(event)
        member.deliver(Event("names", {"room": room.name, "nicks": room.nicks()}))

    def say(self, member: Member, text: str, action: bool = False) -> None:
        self.register(member)
        room, nick, t = member.room, member.nick, self.clock()
        record = {"kind": "message", "room": room.key, "nick": nick, "text": text,
                  "t": t, "action": action}

        def accepted(msg_id: int) -> None:
            fields = {"id": msg_id, "ts": None, "room": room.name, "nick": nick, "text": text}
            if action:
                fields["action"] = True
            event = Event.timed("message", t, **fields)
            presence.before(self, room, nick)
            room.broadcast(event, sender=member)

        self.history.append(record, accepted)

    def private(self, member: Member, target: str, text: str) -> None:
        self.register(member)
        recipient = self.members.get(fold(target))
        if recipient is None:
            raise ChatError("no-such-nick", f"nobody is called {target}")
        sender, t = member.nick, self.clock()
        record = {"kind": "private", "from": sender, "to": recipient.nick, "text": text,
                  "t": t, "action": False}

        def accepted(msg_id: int) -> None:
            event = Event.timed("private", t, id=msg_id, ts=None, **{
                "from": sender, "to": recipient.nick, "text": text})
            recipient.deliver(event)
            if member.echo and member is not recipient:
                member.deliver(event)

        self.history.append(record, accepted)

    def who(self, member: Member, name: Optional[str] = None) -> None:
        if name is None:
            room = member.room or self.rooms[fold(self.default_room)]
            room_name, nicks = room.name, room.nicks()
        else:
            room_name = valid_room(name)
            room = self.rooms.get(fold(room_name))
            if room is not None:
                room_name, nicks = room.name, room.nicks()
            else:
                nicks = []
        member.deliver(Event("names", {"room": room_name, "nicks": nicks}))

    def list_rooms(self, member: Member) -> None:
        rooms = [
            {"name": room.name, "members": len(room.members)}
            for room in sorted(self.rooms.values(), key=lambda r: r.key)
        ]
        member.deliver(Event("rooms", {"rooms": rooms}))

    # -- internals -----------------------------------------------------------

    def _guest_nick(self) -> str:
        while True:
            self._guests += 1
            nick = f"guest{self._guests}"
            if fold(nick) not in self.members:
                return nick

    def _room(self, name: str) -> Room:
        key = fold(name)
        room = self.rooms.get(key)
        if room is None:
            room = self.rooms[key] = Room(name, self)
        return room

    def _leave(self, member: Member, reason: str) -> None:
        room = member.room
        event = Event.timed("part", self.clock(), room=room.name, nick=member.nick,
                            ts=None, reason=reason)
        if presence.batched(self, room):
            member.deliver(event)  # the leaver's own part; the room's in a batch
            presence.left(self, room, member.nick)
        else:
            room.broadcast(event)  # the leaver included
        fanout.catch_up(member)  # what it is owed, up to its own part
        del room.members[member]
        member.room = None
        if not room.members and room.key != fold(self.default_room):
            del self.rooms[room.key]
