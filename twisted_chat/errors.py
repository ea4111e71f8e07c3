"""The one exception type the chat core raises for a client's mistake.

Its ``code`` is the ``error`` event's code on the wire (see docs/protocol.rst).
"""


class ChatError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(code, message)
        self.code = code
        self.message = message
