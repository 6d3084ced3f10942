"""How dittohead's short-lived commands (``dittohead``, ``dittohead-receive``) run and end.

Both handle one transfer and exit. Their objects (an item or two per file) hold no reference
cycles and are freed by reference counting, so the cyclic garbage collector only walks them
again and again while the files go by (~30 ms of the client's CPU for 20,000 files); it is off.
And once the command is done, every byte it owes is written and synced, so the interpreter's
teardown (freeing what tens of thousands of files left: 10-20 ms) would only delay the end of
the send, which the other side waits for: the process ends without it.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn


def run_and_exit(main: Callable[[], int]) -> NoReturn:
    """Run `main` with the cyclic garbage collector off, flush, and end the process with its
    status (Python's own 120 when buffered output could not be written)."""
    gc.disable()
    code = main()
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        code = code or 120
    except ValueError:
        pass  # a stream was closed: nothing is buffered in it
    os._exit(code)
