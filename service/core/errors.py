"""Domain errors of the tagging core: each has a stable ``code`` and a human ``message``.

The core raises these and nothing HTTP-shaped; every door (REST, OIP, WebSocket, CLI) maps
them to its own vocabulary (``service.errors`` holds the one table for HTTP statuses).
"""

from __future__ import annotations


class TaggingError(Exception):
    """Base of the core's errors."""

    code = "tagging_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidParameters(TaggingError):
    """A parameter the caller chose cannot be used (window too short, k out of range...)."""

    code = "invalid_parameters"


class UnknownModel(TaggingError):
    code = "unknown_model"


class NotReady(TaggingError):
    """Models are still loading (or failed to load); retry after ``retry_after_s``."""

    code = "not_ready"

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class MissingOutput(TaggingError):
    """The model has no output of the kind the call needs (no embedding, no framewise)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.code = f"no_{kind}_output"


class TooMuchWork(TaggingError):
    """One request asks for more than a request may cost (windows, frames, audio)."""

    code = "request_too_large"


class TimedOut(TaggingError):
    """The request's deadline passed before its windows were computed."""

    code = "timeout"


class EngineUnavailable(TaggingError):
    """A remote engine (the ``oip`` backend's engine tier) could not run a batch."""

    code = "engine_unavailable"


# The batcher's errors: plain exceptions with a ``code``, raised below the tagger (which
# turns ``DeadlineExceeded`` into ``TimedOut``; the others reach the doors as they are).


class QueueFull(Exception):
    """The queue cannot take the request's windows now; retry after ``retry_after_s``."""

    code = "overloaded"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"queue full, retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class TooManyWindows(Exception):
    """The request has more windows than the queue holds in all: it can never be admitted."""

    code = "request_too_large"

    def __init__(self, windows: int, limit: int) -> None:
        super().__init__(
            f"the request makes {windows} windows; at most {limit} fit in the queue at once"
        )
        self.windows, self.limit = windows, limit


class DeadlineExceeded(Exception):
    """The request's deadline passed before all its windows ran."""

    code = "timeout"


SHUTTING_DOWN = "the service is shutting down"  # why work is refused once a drain began


class BatcherStopped(Exception):
    """The batcher is shutting down and takes no new work (or gave up on queued work)."""

    code = "shutting_down"
