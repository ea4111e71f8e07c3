"""The IRC face: real IRC clients (irssi, WeeChat, HexChat, bots) in the same
rooms as every other face. ``message`` parses and builds IRC lines,
``render`` turns hub events into IRC lines, ``protocol`` is the connection
and its commands (docs/irc.rst says what is supported)."""
