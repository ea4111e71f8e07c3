"""Room fan-out coalesced per reactor turn: one pre-encoded blob per member per turn.

A room's events of one turn collect in a :class:`Batch` instead of being
delivered member by member. At the end of the turn :func:`flush` renders the
batch once per output mode and hands that one ``bytes`` object to every member
whose share is the common one; the loop over members does no per-event work.

Members whose share differs are the exception and get their own slice:

- a sender that does not echo (text mode) gets the batch minus its messages;
- a member that joined mid-turn gets only what followed its join;
- a member that receives a direct event (``names``, ``pong``, ``private``...)
  or leaves mid-turn is *caught up* first (:func:`catch_up`): the room events
  it was owed so far are given to it before the direct event, so its causal
  order holds, and the flush only gives it the rest.

A member takes part through its ``sink`` (an object with ``mode``,
``push(bytes)`` and ``member``: the connection's
:class:`~twisted_chat.delivery.outlet.Outlet`). Members whose rendering (see
:mod:`twisted_chat.delivery.render`) makes an event of the batch personal
get a rendering of their own, never the common blob. A sink may also keep
``member.express`` (an opaque handle) and ``member.express_via``
(``(push_express, mode)``) set while its share can go out in bulk: the flush
then hands all such members of one ``express_via`` to
``push_express(members, handles, blob)`` in one call, reading nothing but the member objects (at 10,000 members a
Python call and a few objects per member are a third of the fan-out's
time). A member without a sink, or whose ``deliver`` has been swapped away
from ``direct`` (e.g. while its history replay holds live events), is
served event by event through ``deliver``.
No transport here: the hub calls these, the protocol layer is the sink.
"""

import heapq
from itertools import count
from operator import itemgetter
from typing import Dict, List, Optional, Tuple

from .delivery import render

# Every batched event gets the next number: a member in several rooms gets
# their batches merged in this (the hub's) order.
_seq = count()
_SEQ = itemgetter(2)


class Batch:
    """One room's events of the current turn."""

    __slots__ = ("events", "senders", "cursors")

    def __init__(self):
        # (event, member that must not get it back or None, sequence number)
        self.events: List[Tuple[object, Optional[object], int]] = []
        self.senders = set()  # members excluded from some event (no echo)
        # member -> index of the first event it has not been given yet; only
        # for members joined mid-turn or caught up.
        self.cursors: Dict[object, int] = {}


def _fast(member):
    return member.sink is not None and member.deliver is member.direct


def _give(member, items, counts):
    """Give batch ``items`` to one member, minus its own unechoed messages
    (counted in ``counts``, the hub's twisted_chat.metrics.Counts)."""
    if _fast(member):
        sink = member.sink
        mode = sink.mode
        pieces = [e.encode(mode, sink) for e, skip, _ in items if skip is not member]
        if pieces:
            data = b"".join(pieces)
            counts.deliveries += len(pieces)
            counts.bytes_out += len(data)
            sink.push(data)
    else:
        for e, skip, _ in items:
            if skip is not member:
                member.deliver(e)


def _personal(events, mode) -> bool:
    """Whether an event of the batch comes out differently for each recipient
    in ``mode``: then each member in that mode gets its own rendering."""
    personal = render.rendering(mode).personal
    return personal is not None and any([personal(e) for e, _, _ in events])


def broadcast(room, event, sender=None) -> None:
    """Queue ``event`` for every member of ``room``; a non-echoing ``sender`` is skipped."""
    batch = room.batch
    if batch is None:
        batch = room.batch = Batch()
        hub = room.hub
        schedule = hub.schedule if hub is not None else None
        if schedule is None:
            # No turn to wait for (a bare Hub): deliver at once.
            batch.events.append((event, _skip(batch, sender), next(_seq)))
            flush(room)
            return
        schedule(room)
    batch.events.append((event, _skip(batch, sender), next(_seq)))


def _skip(batch, sender):
    if sender is None or sender.echo:
        return None
    batch.senders.add(sender)
    return sender


def entering(room, member) -> None:
    """``member`` joins ``room`` now: it gets none of the turn's earlier events."""
    batch = room.batch
    if batch is not None:
        batch.cursors[member] = len(batch.events)


def catch_up(member) -> None:
    """Give ``member`` the events of its rooms' batches it is owed so far,
    in the hub's order across those rooms."""
    owed = None
    hub = None
    for room in member.rooms:
        batch = room.batch
        if batch is None:
            continue
        events = batch.events
        end = len(events)
        start = batch.cursors.get(member, 0)
        batch.cursors[member] = end
        if start < end:
            hub = room.hub
            if owed is None:
                owed = [events[start:end]]
            else:
                owed.append(events[start:end])
    if owed is not None:
        _give(member, owed[0] if len(owed) == 1 else list(heapq.merge(*owed, key=_SEQ)),
              hub.counts)


def flush_all(rooms) -> None:
    """End of turn for every room with a batch. A member in several of them
    first gets all it is owed, merged in order; the rooms' flushes then
    serve everybody else their common share."""
    if len(rooms) > 1:
        seen, shared = set(), set()
        for room in rooms:
            if room.batch is None:
                continue
            for member in room.members:
                if len(member.rooms) > 1:
                    if member in seen:
                        shared.add(member)
                    else:
                        seen.add(member)
        for member in shared:
            catch_up(member)
    for room in rooms:
        flush(room)


def flush(room) -> None:
    """End of turn: every member of ``room`` gets its share of the batch."""
    batch = room.batch
    if batch is None:
        return
    room.batch = None
    events = batch.events
    end = len(events)
    senders, cursors = batch.senders, batch.cursors
    special = bool(senders or cursors)
    express = {}  # (push_express, mode) -> ([member], [handle])
    shares = {}  # mode -> the other sinks that get the whole batch
    others = []
    for member in room.members:
        if (member.deliver is not member.direct
                or (special and (member in senders or member in cursors))):
            others.append(member)
            continue
        handle = member.express
        if handle is not None:
            group = express.get(member.express_via)
            if group is None:
                group = express[member.express_via] = ([], [])
            group[0].append(member)
            group[1].append(handle)
            continue
        sink = member.sink
        if sink is None:
            others.append(member)
            continue
        group = shares.get(sink.mode)
        if group is None:
            group = shares[sink.mode] = []
        group.append(sink)
    blobs = {}

    def blob(mode):
        data = blobs.get(mode)
        if data is None:
            data = blobs[mode] = b"".join([e.encode(mode) for e, _, _ in events])
        return data

    # Pushing can drop a slow consumer, which leaves the room: the groups are
    # copies, and each member of ``others`` is checked before it is served.
    # Counted per group (twisted_chat.metrics): each member gets every event.
    served = size = 0
    for (push_express, mode), (members, handles) in express.items():
        if _personal(events, mode):
            for member in members:
                if room in member.rooms:
                    _give(member, events, room.hub.counts)
            continue
        data = blob(mode)
        served += len(members)
        size += len(data) * len(members)
        push_express(members, handles, data)
    for mode, sinks in shares.items():
        if _personal(events, mode):
            for sink in sinks:
                if room in sink.member.rooms:
                    _give(sink.member, events, room.hub.counts)
            continue
        data = blob(mode)
        served += len(sinks)
        size += len(data) * len(sinks)
        for sink in sinks:
            sink.push(data)
    if served:
        counts = room.hub.counts
        counts.deliveries += served * end
        counts.bytes_out += size
    for member in others:
        if room in member.rooms:
            start = cursors.get(member, 0)
            if start < end:
                _give(member, events[start:end], room.hub.counts)
