"""refusal_log.py: warnings about refused clients, at most so many per window, clock passed in."""

from __future__ import annotations

import logging

import pytest

from wonderq_server.refusal_log import RefusalLog

LOGGER = "wonderq.test.refusals"


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == LOGGER]


def test_each_kind_logs_its_first_few_per_window_then_says_how_many_more(caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    log = RefusalLog(logging.getLogger(LOGGER), per_window=2, window_s=60.0)
    for i in range(5):
        log.warn("wrong auth tokens", 100.0 + i, "wrong token from %s", f"peer{i}")
    log.warn("connections refused", 104.0, "refused %s", "peerX")  # a budget of its own
    assert lines(caplog) == ["wrong token from peer0", "wrong token from peer1",
                             "refused peerX"]
    log.warn("wrong auth tokens", 160.0, "wrong token from %s", "later")  # a new window
    assert lines(caplog)[3:] == ["3 more wrong auth tokens in 60 s were not logged one by one",
                                 "wrong token from later"]


def test_flush_says_what_was_left_out_once(caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    log = RefusalLog(logging.getLogger(LOGGER), per_window=1, window_s=60.0)
    for i in range(4):
        log.warn("connections refused", 10.0 + i, "refused %d", i)
    log.flush(20.0)
    log.flush(21.0)
    assert lines(caplog) == ["refused 0",
                             "3 more connections refused in 10 s were not logged one by one"]
