"""WonderQ server: a work-queue broker with SQS-style leases on one server."""

from .compiled import check_not_stale

__version__ = "0.1.0"

check_not_stale()
