"""Several ``twistd chat`` processes as one chat (``--redis``, issue 15).

PostgreSQL (``--db postgresql://...``) holds the truth and gives the message
ids; Redis carries notifications between the servers, as Synapse's workers
do. :mod:`.store` is what the hub sees (a store), :mod:`.sequence` the
cluster-wide order, :mod:`.redis` the link to Redis. The hub itself stays
transport-free and single-server code paths are untouched without
``--redis``.
"""

import re

_SCHEME = re.compile(r"^redis://(?:[^@/]*@)?([^:/]+)(?::(\d+))?/?$")


def endpoint_description(value: str) -> str:
    """``--redis``: a Twisted client endpoint string (tcp:HOST:PORT,
    unix:PATH); ``HOST:PORT``, ``HOST`` and ``redis://HOST:PORT`` mean TCP."""
    value = value.strip()
    match = _SCHEME.match(value)
    if match:
        return f"tcp:{match.group(1)}:{match.group(2) or 6379}"
    kind = value.split(":", 1)[0]
    if kind in ("tcp", "unix", "ssl", "tls", "tcp6"):
        return value
    host, _, port = value.partition(":")
    return f"tcp:{host}:{port or 6379}"


def check() -> str:
    """Why the cluster cannot run here ('' when it can)."""
    try:
        import txredisapi  # noqa: F401
    except ImportError:
        return "--redis needs txredisapi, which is not installed: pip install 'twisted-chat[cluster]'"
    return ""
