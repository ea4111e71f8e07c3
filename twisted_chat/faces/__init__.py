"""The faces of the chat: each turns one wire protocol into calls on the hub
and renders the hub's events back (``irc`` so far; the line protocol still
lives in ``twisted_chat.protocol``)."""
