"""The chat rules: members, nicks, rooms, and who receives which event.

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

from twisted.internet.defer import succeed
from twisted.logger import Logger
from zope.interface import implementer

from . import __version__, fanout, presence
from .commands import fold, valid_nick, valid_room
from .errors import ChatError
from .events import Event, error
from .history import HISTORY_CAP, IHistoryStore, private_message, room_message
from .metrics import Counts

log = Logger()
DEFAULT_REPLAY = 50  # messages replayed to a joiner (twistd chat --history)

# What a member that has not logged in may do on a server without guests:
# nothing that shows it to anybody (mode and ping only shape its own output).
GUEST_COMMANDS = frozenset({"login", "help", "quit", "mode", "ping"})

_NOT_STORED = error("not-stored", "the server could not store your message, so nobody "
                    "received it; try again later")


class Member:
    """One connection's identity in the hub."""

    __slots__ = ("nick", "key", "room", "echo", "deliver", "account", "direct", "sink",
                 "express", "express_via", "gone", "_live", "_held", "_replayed",
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
        # Kept by the sink: while ``express`` is not None, the room's share may
        # be handed to ``express_via`` = (push_express, mode) in bulk with
        # this handle, instead of going through ``sink.push``. Both live here,
        # next to ``deliver``, so the flush reads only the member objects.
        self.express = None
        self.express_via = None
        self.gone = False  # disconnected: queued events skip it
        # While history is being fetched for this member, ``deliver`` is
        # swapped for one that queues events in ``_held`` behind the fetch;
        # ``_live`` keeps the real one. See Hub._replay.
        self._live = None
        self._held: Optional[deque] = None  # of Event and _Replay
        self._replayed: Optional[set] = None  # ids replayed while holding

    @property
    def registered(self) -> bool:
        return self.room is not None

    def __repr__(self) -> str:
        return f"<Member {self.nick}>"


class Room:
    __slots__ = ("name", "key", "members", "hub", "batch", "presence", "pending", "epoch",
                 "_nicks")

    def __init__(self, name: str, hub=None):
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

    def nicks(self) -> List[str]:
        """The members' nicks, in join order (a copy)."""
        return list(self._nicks)

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

    __slots__ = ("hub", "member", "room", "epoch", "nick", "text", "t", "action", "event",
                 "msg_id", "run")

    def __init__(self, hub, member, room, text, t, action):
        self.hub, self.member, self.room = hub, member, room
        self.epoch = room.epoch
        self.nick, self.text, self.t, self.action = member.nick, text, t, action
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
        self.event = Event.timed("message", self.t, **fields)
        self.hub._ready(self, self._send)

    def _send(self) -> None:
        member, room, event = self.member, self.room, self.event
        self.hub._sent_id = self.msg_id
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


class _Replay:
    """One pending history fetch for a member: rows is None until it arrives."""

    __slots__ = ("room", "on_join", "limit", "before", "rows", "failed")

    def __init__(self, room, on_join, limit, before):
        self.room, self.on_join, self.limit, self.before = room, on_join, limit, before
        self.rows = None
        self.failed = False


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
    ):
        self.server_name = server_name
        self.motd = motd
        self.default_room = valid_room(default_room)
        self.clock = clock
        self.history = history if history is not None else MemoryHistory()
        self.replay = min(max(replay, 0), HISTORY_CAP)  # messages replayed on join
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
        self._queue = deque()  # of _Step: output waiting behind unstored messages
        # The id of the last room message that went out: every message with
        # a lower id has gone out too (ids follow the output order), every
        # later one is still to come, so a replay asked for now reads up to it.
        self._sent_id: Optional[int] = None
        self._draining = False
        self.counts = Counts()  # what the server did, for its metrics
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
        member.gone = True
        if member._held is not None:
            # Pending replays are moot, and so is what was held for it.
            member.deliver = member._live
            member._held = member._live = member._replayed = None

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
            self.send(member, Event("info", {"message": f"you are already {nick}"}))
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
            self.send(holder, Event("info", {
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
            nicks = member.room._nicks
            nicks[nicks.index(old)] = nick
            presence.before(self, member.room, old)
            self._broadcast(member.room, event)
        else:
            self.send(member, event)
            self.register(member)

    def join(self, member: Member, name: str) -> None:
        room = self._room(valid_room(name))
        if member.room is room:
            self.send(member, Event("names", {"room": room.name, "nicks": room.nicks()}))
            return
        if member.room is not None:
            self._leave(member, "left")
        batched = presence.batched(self, room)
        room.changing()
        fanout.entering(room, member)
        room.members[member] = None
        room._nicks.append(member.nick)
        member.room = room
        event = Event.timed("join", self.clock(), room=room.name, nick=member.nick)
        if batched:
            self.send(member, event)  # its own join now; the room's in a presence batch
            presence.joined(self, room, member.nick)
        else:
            self._broadcast(room, event)
        self.send(member, Event("names", {"room": room.name, "nicks": room.nicks()}))
        if self.replay:
            # Fetched only once every message accepted before this join is
            # stored: the replay then holds all of them, and every later one
            # reaches the joiner live.
            self.in_order(lambda: self._replay(member, room, True, self.replay))

    def history_page(self, member: Member, limit: Optional[int] = None,
                     before: Optional[int] = None) -> None:
        """``/history [N]`` and ``/history before ID [N]`` for the member's room
        (the default room if it has none yet; asking does not register)."""
        room = member.room or self.rooms[fold(self.default_room)]
        limit = min(limit or self.replay or DEFAULT_REPLAY, HISTORY_CAP)
        self.in_order(lambda: self._replay(member, room, False, limit, before))

    def say(self, member: Member, text: str, action: bool = False) -> None:
        self.register(member)
        room, t = member.room, self.clock()
        # The room as it is now receives it, whenever the store is done.
        said = _Said(self, member, room, text, t, action)
        room.pending += 1
        self._queue.append(said)
        self.history.append(room_message(room.key, room.name, said.nick, text, t, action),
                            said.stored, said.not_stored)

    def private(self, member: Member, target: str, text: str) -> None:
        self.register(member)
        recipient = self.members.get(fold(target))
        if recipient is None:
            raise ChatError("no-such-nick", f"nobody is called {target}")
        sender, t = member.nick, self.clock()
        record = private_message(sender, recipient.nick, text, t)
        step = self._wait()

        def accepted(msg_id: int) -> None:
            event = Event.timed("private", t, id=msg_id, ts=None, **{
                "from": sender, "to": recipient.nick, "text": text})

            def send():
                if not recipient.gone:
                    recipient.deliver(event)
                if member.echo and member is not recipient and not member.gone:
                    member.deliver(event)

            self._ready(step, send)

        self.history.append(record, accepted, self._not_stored(member, step))

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
        self.send(member, Event("names", {"room": room_name, "nicks": nicks}))

    def list_rooms(self, member: Member) -> None:
        rooms = [
            {"name": room.name, "members": len(room.members)}
            for room in sorted(self.rooms.values(), key=lambda r: r.key)
        ]
        self.send(member, Event("rooms", {"rooms": rooms}))

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
            recipients = list(room.members)

            def send():
                for m in recipients:
                    if not m.gone:
                        m.deliver(event)

            self._queue.append(_Step(send))
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
                before: Optional[int] = None) -> None:
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
        request = _Replay(room, on_join, limit, before)
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
        before = upto + 1 if before is None else min(before, upto + 1)
        d = self.history.before(room.key, before, limit)

        def arrived(rows):
            request.rows = rows
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

    @staticmethod
    def _deliver_replay(live, request: "_Replay", replayed: set) -> None:
        if request.failed:
            live(error("history-unavailable", "the history could not be read"))
            return
        for row in request.rows:
            replayed.add(row.id)
            live(_history_event(request.room, row))
        if request.rows or not request.on_join:
            fields = {"room": request.room.name, "count": len(request.rows),
                      "limit": request.limit}
            if request.rows:
                fields["oldest"] = request.rows[0].id
            live(Event("history-end", fields))

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
            self.send(member, event)  # the leaver's own part; the room's in a batch
            presence.left(self, room, member.nick)
        else:
            self._broadcast(room, event)  # the leaver included
        fanout.catch_up(member)  # what it is owed, up to its own part
        room.changing()
        del room.members[member]
        room._nicks.remove(member.nick)
        member.room = None
        if not room.members and room.key != fold(self.default_room):
            del self.rooms[room.key]


def _catch_up(member: Member) -> None:
    room = member.room
    if room is not None and room.batch is not None:
        fanout.catch_up(member)


def _history_event(room: Room, row) -> Event:
    fields = {"id": row.id, "ts": None, "room": room.name, "nick": row.nick, "text": row.text}
    if row.action:
        fields["action"] = True
    fields["history"] = True
    return Event.timed("message", row.t, **fields)
