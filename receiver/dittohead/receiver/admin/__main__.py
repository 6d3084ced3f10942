"""``python -m dittohead.receiver.admin``: the same as ``dittohead-admin``."""

import sys

from dittohead.receiver.admin.cli import main

sys.exit(main())
