"""The libraries' notices that tell a learner nothing, hidden for the length of one call.

transformers 5 says, when diffusers' pipeline module first loads, that CLIP's (and
SigLIP's) image processor would use torchvision if it were installed. The course never
uses torchvision or those processors (the safety checker is off), so where our code loads
or builds a model it wraps that in :func:`no_known_notices`. Nothing global changes: log
levels, handlers and every other message (the learner's own included) stay as they were.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

# logger name -> words that mark a notice of that logger to hide
KNOWN_NOTICES: dict[str, tuple[str, ...]] = {
    "transformers.utils.import_utils": ("requires torchvision",),
}


def is_known_notice(record: logging.LogRecord) -> bool:
    """Whether a log record is one of :data:`KNOWN_NOTICES`."""
    words = KNOWN_NOTICES.get(record.name, ())
    return any(w in record.getMessage() for w in words)


@contextlib.contextmanager
def no_known_notices() -> Iterator[None]:
    """Within the block, the :data:`KNOWN_NOTICES` are not shown; nothing else changes.

    A filter on each of those loggers drops exactly those messages while the block runs
    and is removed after it (the notebooks' setup cell hides the same notice the same
    way, visibly, for the whole notebook).
    """

    def keep(record: logging.LogRecord) -> bool:
        return not is_known_notice(record)

    loggers = [logging.getLogger(name) for name in KNOWN_NOTICES]
    for logger in loggers:
        logger.addFilter(keep)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(keep)
