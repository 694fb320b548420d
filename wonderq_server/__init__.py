"""WonderQ server: a work-queue broker with SQS-style leases on one server."""

__version__ = "0.1.0"
