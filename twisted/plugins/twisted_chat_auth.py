"""``--auth chat-passwd:FILE``: the cred checker for twisted-chat-passwd's scrypt file.

A checker-factory plugin for twisted.cred.strcred; the checker itself lives in
twisted_chat.auth and is imported only when used.
"""

from twisted.cred.credentials import IUsernamePassword
from twisted.cred.strcred import ICheckerFactory
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(ICheckerFactory, IPlugin)
class ChatPasswdCheckerFactory:
    authType = "chat-passwd"
    authHelp = (
        "Names and salted scrypt password hashes in a file, one account a line,\n"
        "as written by the twisted-chat-passwd command. The file is re-read\n"
        "when it changes; passwords are checked in a thread."
    )
    argStringFormat = "Path to a twisted-chat-passwd file"
    credentialInterfaces = (IUsernamePassword,)

    def generateChecker(self, argstring):
        from twisted_chat.auth import ScryptPasswordFile

        return ScryptPasswordFile(argstring)


chatPasswdCheckerFactory = ChatPasswdCheckerFactory()
