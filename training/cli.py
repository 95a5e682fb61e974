"""One way for the command-line entry points to end: a user's mistake is one ``error:`` line
and exit code 1, never a traceback; a bug still raises."""

from __future__ import annotations

import sys
from collections.abc import Callable

from training.checkpoints import CheckpointError

# What bad input raises: missing or unreadable files, wrong values, unknown names.
USER_ERRORS: tuple[type[Exception], ...] = (CheckpointError, OSError, ValueError, KeyError)


def run(main: Callable[[], int], *also: type[Exception]) -> int:
    """Call ``main``; report a user error (or one of ``also``) on stderr in one line and
    return 1."""
    try:
        return main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (*USER_ERRORS, *also) as exc:
        # KeyError's str() is the repr of its argument: print the message itself
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 1
