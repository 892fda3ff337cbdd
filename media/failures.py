"""Unexpected errors in our own packet handling: logged with a traceback, at most once a minute."""

from __future__ import annotations

import logging
import time

from .estimator import Throttle

log = logging.getLogger("teleconsult.media")

# Not for every packet: one broken publisher must not fill the log.
_failure_log = Throttle(60.0)


def handled_failure(what: str) -> None:
    """Log the exception being handled, at most once a minute."""
    if _failure_log.ready(time.monotonic()):
        log.exception("%s failed (logged at most once a minute)", what)
