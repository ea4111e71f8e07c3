"""IRC reply numerics by name: Twisted's table (twisted.words.protocols.irc)
plus the modern ones it lacks (modern.ircdocs.horse, IRCv3)."""

from twisted.words.protocols.irc import symbolic_to_numeric as _TWISTED

NUMERIC = dict(_TWISTED)
NUMERIC.update({
    "RPL_LOCALUSERS": "265",
    "RPL_GLOBALUSERS": "266",
    "RPL_WHOISACCOUNT": "330",
    "RPL_TOPICWHOTIME": "333",
    "RPL_CREATIONTIME": "329",
    "RPL_WHOISACTUALLY": "338",
    "ERR_INPUTTOOLONG": "417",
    "ERR_INVALIDCAPCMD": "410",
    "ERR_BADCHANMASK": "476",
    "ERR_INVALIDMODEPARAM": "696",
    "RPL_LOGGEDIN": "900",
    "RPL_LOGGEDOUT": "901",
    "ERR_NICKLOCKED": "902",
    "RPL_SASLSUCCESS": "903",
    "ERR_SASLFAIL": "904",
    "ERR_SASLTOOLONG": "905",
    "ERR_SASLABORTED": "906",
    "ERR_SASLALREADY": "907",
    "RPL_SASLMECHS": "908",
})


def numeric(name: str) -> str:
    return NUMERIC[name]
