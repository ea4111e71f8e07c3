"""Batched membership changes for big rooms: one ``presence`` event per interval.

In a room of ``presence_threshold`` members or more, a join or part is not
broadcast on its own (a storm of n joins would cost n² notices); the member
concerned still gets its own ``join``/``part`` at once (and a joiner its
``names``), and everybody else learns the net change once per
``presence_interval`` from one event::

    presence {room, joined: [...], left: [...], ts}

Net means: a nick that joins and leaves within one interval appears in
neither list, one that leaves and comes back neither; so a client applies
``left`` then ``joined`` to its member list. Pending changes go out early,
before any event whose meaning depends on them: a message or nick change
from a member others have not yet been told about.

Transport-free: the hub calls these; ``hub.call_later`` (set by the protocol
factory) provides the interval timer, and without one nothing is batched.
"""

from .events import Event

DEFAULT_THRESHOLD = 100  # members; 0 turns batching off
DEFAULT_INTERVAL = 1.0  # seconds


class Pending:
    """A room's membership changes not yet announced."""

    __slots__ = ("joined", "left", "call")

    def __init__(self):
        self.joined = {}  # nick -> None (a dict keeps the order)
        self.left = {}
        self.call = None


def batched(hub, room) -> bool:
    """Whether a join or part in ``room`` is announced in a batch, now."""
    if room.presence is not None:
        return True  # keep order behind changes already pending
    threshold = hub.presence_threshold
    return bool(threshold) and hub.call_later is not None and len(room.members) >= threshold


def _pending(hub, room) -> Pending:
    pending = room.presence
    if pending is None:
        pending = room.presence = Pending()
        pending.call = hub.call_later(hub.presence_interval, announce, hub, room)
    return pending


def joined(hub, room, nick: str) -> None:
    pending = _pending(hub, room)
    if nick in pending.left:
        del pending.left[nick]
    else:
        pending.joined[nick] = None


def left(hub, room, nick: str) -> None:
    pending = _pending(hub, room)
    if nick in pending.joined:
        del pending.joined[nick]
    else:
        pending.left[nick] = None


def announce(hub, room) -> None:
    """Broadcast the room's pending changes (if any) as one ``presence`` event."""
    pending = room.presence
    if pending is None:
        return
    room.presence = None
    if pending.call is not None and pending.call.active():
        pending.call.cancel()
    if pending.joined or pending.left:
        room.broadcast(Event.timed("presence", hub.clock(), room=room.name,
                                   joined=list(pending.joined), left=list(pending.left)))


def before(hub, room, nick: str) -> None:
    """``nick`` is about to speak (or rename) in ``room``: announce it first if pending."""
    pending = room.presence
    if pending is not None and nick in pending.joined:
        announce(hub, room)
