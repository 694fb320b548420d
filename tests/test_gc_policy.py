"""--gc-freeze (gc_policy.py): what survives a middle-generation collection is frozen, so
that a backlog of leased messages is not scanned again and again (full collections of
hundreds of ms). In process: the freezer itself, on this process's collector (restored
after). End to end: the real server counts its freezes in STATS."""

from __future__ import annotations

import gc

import pytest

from wonderq_client import connect
from wonderq_server.config import parse_config
from wonderq_server.gc_policy import YOUNG_COLLECTIONS_PER_MIDDLE, CollectorFreezer


class Held:
    """A small object the collector tracks, as a leased message is."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value


def test_the_survivors_of_a_middle_collection_are_frozen_and_uninstall_restores():
    before_threshold, before_callbacks = gc.get_threshold(), list(gc.callbacks)
    freezer = CollectorFreezer()
    gc.collect()
    try:
        assert freezer.install() and freezer.installed
        assert freezer.install()  # twice is once
        assert gc.get_threshold()[1] == YOUNG_COLLECTIONS_PER_MIDDLE
        assert gc.callbacks.count(freezer._after_collection) == 1
        kept = [Held(i) for i in range(20 * gc.get_threshold()[0])]  # young collections
        gc.collect(1)  # and one of the middle generation, at the least
        assert freezer.freezes >= 1
        assert gc.get_freeze_count() >= len(kept) // 2  # most of them: no longer scanned
    finally:
        freezer.uninstall()
        freezer.uninstall()  # twice is once
        gc.unfreeze()
    assert not freezer.installed
    assert gc.get_threshold() == before_threshold
    assert gc.callbacks == before_callbacks


def test_a_freezer_not_installed_freezes_nothing():
    freezer = CollectorFreezer()
    kept = [Held(i) for i in range(10_000)]
    gc.collect(1)
    assert freezer.freezes == 0 and kept


@pytest.mark.parametrize(("given", "expected"), [([], True), (["--gc-freeze", "on"], True),
                                                 (["--gc-freeze", "off"], False)])
def test_the_flag_and_its_default(given, expected):
    assert parse_config([*given, "--in-memory"], {}).gc_freeze is expected


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("0", False),
                                                 ("True", True), ("on", True)])
def test_its_variable_takes_the_words_the_switches_take(value, expected):
    # WONDERQ_GC_FREEZE=false stopped the start, while WONDERQ_IN_MEMORY=1 works (a reviewer).
    assert parse_config(["--in-memory"], {"WONDERQ_GC_FREEZE": value}).gc_freeze is expected


def test_a_bad_value_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--gc-freeze", "maybe", "--in-memory"], {})
    assert exit_info.value.code == 2
    assert "--gc-freeze" in capsys.readouterr().err


async def leased_backlog_freezes(port: int) -> dict:
    """Lease 60,000 messages (each then a tracked object) and return STATS' server part."""
    async with connect("127.0.0.1", port) as client:
        for _ in range(60):
            await client.put_many("q", [b"x"] * 1000)
        held = []
        for _ in range(60):
            held.extend(await client.receive("q", max=1000, visibility=600))
        assert len(held) == 60_000
        return (await client.stats())["server"]


async def test_the_server_freezes_a_leased_backlog_and_says_so(server_factory):
    server = server_factory()
    info = await leased_backlog_freezes(server.port)
    assert info["gc_freeze"] is True
    assert info["gc_freezes_total"] >= 1


async def test_with_gc_freeze_off_the_server_freezes_nothing(server_factory):
    server = server_factory("--gc-freeze", "off")
    info = await leased_backlog_freezes(server.port)
    assert info["gc_freeze"] is False
    assert info["gc_freezes_total"] == 0


def test_on_a_python_whose_collector_it_does_not_know_it_stays_out(monkeypatch):
    from wonderq_server import gc_policy

    monkeypatch.setattr(gc_policy, "SUPPORTED", False)
    before_threshold, before_callbacks = gc.get_threshold(), list(gc.callbacks)
    freezer = CollectorFreezer()
    assert freezer.install() is False and not freezer.installed
    assert gc.get_threshold() == before_threshold and gc.callbacks == before_callbacks
    freezer.uninstall()
