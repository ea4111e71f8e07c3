"""A real Redis server for tests: :class:`twisted_chat.cluster.redistemp.RedisServer`
(Debian's ``redis-server`` in a temp directory, on a free loopback port,
nothing saved)."""

from twisted_chat.cluster.redistemp import RedisServer, why_not

__all__ = ["RedisServer", "why_not"]
