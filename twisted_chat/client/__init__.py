"""The twisted-chat desktop client.

A Tk-free core (:mod:`.protocol`, :mod:`.model`, :mod:`.session`) that a bot
or a test can use without a display, and a Tk window (:mod:`.tkview`) on
Twisted's reactor through ``twisted.internet.tksupport`` (:mod:`.app`).
"""
