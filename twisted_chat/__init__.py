"""twisted-chat: a self-hosted real-time chat server and Tk client built on Twisted."""

__version__ = "0.1.0"
