"""``python -m twisted_chat.client``: the desktop client."""

import sys

from .app import main

sys.exit(main())
