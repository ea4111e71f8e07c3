"""``twisted-chat-passwd FILE NAME``: add an account, change its password, or remove it.

The password is read without echo from the terminal (twice), or as one line
from standard input when that is not a terminal (for scripts)::

    printf '%s\\n' "$PASSWORD" | twisted-chat-passwd accounts.passwd alice

The server (``--auth chat-passwd:FILE``) notices the change without a restart.
"""

import argparse
import getpass
import sys

from . import passwords
from .commands import valid_nick
from .errors import ChatError


def _read_password(stdin) -> str:
    if stdin.isatty():
        first = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != first:
            raise ValueError("the two passwords differ")
        return first
    line = stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def main(argv=None, stdin=None) -> int:
    parser = argparse.ArgumentParser(
        prog="twisted-chat-passwd",
        description="Add a twisted-chat account or change its password (salted scrypt "
                    "hashes, for twistd chat --auth chat-passwd:FILE). The password is "
                    "asked without echo, or read as one line from standard input when "
                    "that is not a terminal.",
    )
    parser.add_argument("file", metavar="FILE", help="the account file (created if missing)")
    parser.add_argument("name", metavar="NAME", help="the account name (a valid nick)")
    parser.add_argument("-d", "--delete", action="store_true", help="remove the account")
    args = parser.parse_args(argv)
    stdin = sys.stdin if stdin is None else stdin
    try:
        name = valid_nick(args.name)
    except ChatError as e:
        parser.exit(2, f"twisted-chat-passwd: bad NAME: {e.message}\n")
    try:
        passwords.read_accounts(args.file)  # refuse to rewrite a file we cannot parse
    except FileNotFoundError:
        if args.delete:
            parser.exit(1, f"twisted-chat-passwd: {args.file} does not exist\n")
    except (OSError, ValueError) as e:
        parser.exit(1, f"twisted-chat-passwd: {e}\n")
    if args.delete:
        if not passwords.set_account(args.file, name, None):
            parser.exit(1, f"twisted-chat-passwd: no account {name} in {args.file}\n")
        print(f"removed {name} from {args.file}")
        return 0
    try:
        password = _read_password(stdin)
        passwords.check_password_text(password)
    except (ValueError, EOFError) as e:
        parser.exit(2, f"twisted-chat-passwd: {e or 'no password given'}\n")
    existed = passwords.set_account(args.file, name, passwords.hash_password(password))
    print(f"{'changed the password of' if existed else 'added'} {name} in {args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
