"""Tests of commit_wait.py, alone and inside group commit's inline fsync.

The connections are stand-ins with real sockets (socketpairs): the test makes
one readable by writing to its other end, as a client's next request would,
and select(2) sees it. The clock is a number the test sets; the only real
time a test spends is a gap of a millisecond that it lets pass on purpose.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import resource
import select
import socket

import pytest
from test_group_commit import Conn, InlineJournal, out

from wonderq_server.commit_wait import FD_SETSIZE, READS_PER_CLIENT, CommitWait
from wonderq_server.group_commit import GroupCommit

LONG_GAP_S = 10.0  # a gap no test waits out: where one should not wait, a wrong one hangs


class Client(Conn):
    """A connection stand-in with a socket: `send()` is its next request arriving."""

    def __init__(self, log: list, name: str) -> None:
        super().__init__(log, name)
        self.sock, self._peer = socket.socketpair()
        self.wait_fd = self.sock.fileno()
        self.paused = False

    def send(self) -> None:
        self._peer.send(b"request")

    def read(self) -> None:
        """read: the loop reads what was sent (so the socket is no longer readable)."""
        self.sock.setblocking(False)
        try:
            while self.sock.recv(4096):
                pass
        except BlockingIOError:
            pass

    def renumber_high(self) -> None:
        """renumber_high: the server's socket gets a number select(2) cannot take (a
        second number for it, FD_SETSIZE or above, as a busy server's sockets have)."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < FD_SETSIZE + 64:
            if hard != resource.RLIM_INFINITY and hard < FD_SETSIZE + 64:
                pytest.skip(f"the open-file limit ({hard}) allows no socket numbered "
                            f"{FD_SETSIZE} or above")
            resource.setrlimit(resource.RLIMIT_NOFILE, (FD_SETSIZE + 64, hard))
        self.wait_fd = fcntl.fcntl(self.sock.fileno(), fcntl.F_DUPFD, FD_SETSIZE)
        self._high_fd = self.wait_fd

    def close(self) -> None:
        self.sock.close()
        self._peer.close()
        if getattr(self, "_high_fd", -1) >= 0:
            os.close(self._high_fd)
            self._high_fd = -1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clients():
    made: list[Client] = []

    def make(log: list, *names: str) -> list[Client]:
        made.extend(Client(log, name) for name in names)
        return made[-len(names):]

    yield make
    for client in made:
        client.close()


class Setup:
    """Group commit with the inline fsync and a commit wait of `wait_s` from the clock."""

    def __init__(self, wait_s: float = 0.001, gap_s: float = LONG_GAP_S) -> None:
        self.journal = InlineJournal()
        self.log = self.journal.log
        self.clock = Clock()
        self.wait = CommitWait(wait_s, gap_s, clock=self.clock)
        self.wakes = 0
        self.gc = GroupCommit(asyncio.get_running_loop(), self.journal, on_fatal=pytest.fail,
                              inline=True, commit_wait=self.wait, wake=self._wake)

    def _wake(self) -> None:
        self.wakes += 1

    def put(self, client: Client, label: str, put_id: int) -> None:
        """put: one loop turn in which `client`'s put is read, run and written."""
        self.journal.write(10, put_id=put_id)
        self.submit(client, out(label), durable=True)

    def submit(self, client: Client, output, durable: bool) -> None:
        client.read()
        self.gc.submit([(client, output)], durable=durable)

    def answered(self, *clients: Client) -> None:
        """answered: a first group, of a put from each client, synced and answered."""
        for put_id in range(1, len(clients) + 1):
            self.journal.write(10, put_id=put_id)
        self.gc.submit([(client, out(f"put {client.name}")) for client in clients],
                       durable=True)
        assert len(self.journal.synced_sizes) == 1  # nobody was expected: synced at once
        assert self.wait.expecting

    def labels(self) -> list[str]:
        return [entry[1] for entry in self.log]


def answered_pair(clients, **settings) -> tuple[Setup, Client, Client]:
    """answered_pair: a Setup (with `settings`) whose first fsync answered clients a and b."""
    setup = Setup(**settings)
    a, b = clients(setup.log, "a", "b")
    setup.answered(a, b)
    return setup, a, b


async def test_an_fsync_waits_for_an_answered_client_whose_next_request_is_in(clients):
    setup, a, b = answered_pair(clients)
    b.send()  # b's next put is on its way; a's came first
    setup.put(a, "put a2", 10)
    assert setup.journal.synced_sizes == [120] and setup.wakes == 1  # put off: read b first
    assert setup.labels() == ["put a", "put b"]
    setup.put(b, "put b2", 11)  # the loop read it: now both are in, and it runs at once
    assert setup.journal.synced_sizes == [120, 140]
    assert setup.labels() == ["put a", "put b", "put b2", "put a2"]  # newest first
    assert setup.wait.holds == 1 and setup.gc.idle


async def test_an_answered_client_that_stays_silent_costs_one_gap(clients):
    setup, a, _silent_b = answered_pair(clients, gap_s=0.001)
    setup.put(a, "put a2", 10)  # b sends nothing: after 1 ms of silence, the fsync runs
    assert setup.journal.synced_sizes == [120, 130] and setup.wakes == 0
    assert setup.labels()[-1] == "put a2"


async def test_nothing_is_waited_for_past_the_wait_after_the_last_fsync(clients):
    # Sporadic traffic: the next put comes later than the wait after the fsync that
    # answered the others, so it is synced at once, whatever they are doing.
    setup, a, b = answered_pair(clients, wait_s=0.001)
    b.send()
    setup.clock.now += 0.002
    setup.put(a, "put a2", 10)
    assert setup.journal.synced_sizes == [120, 130] and setup.wakes == 0


async def test_a_client_busy_with_requests_that_need_no_fsync_stops_being_waited_for(clients):
    setup, a, b = answered_pair(clients)
    b.send()  # readable, and (never read here) it stays so: each turn brings b nothing
    setup.put(a, "put a2", 10)
    for _ in range(READS_PER_CLIENT - 1):
        setup.gc.resume()  # the server's flush after a turn with nothing to submit
    assert setup.wakes == READS_PER_CLIENT and setup.journal.synced_sizes == [120]
    setup.gc.resume()
    assert setup.journal.synced_sizes == [120, 130] and setup.wakes == READS_PER_CLIENT


async def test_a_client_the_server_is_not_reading_is_not_waited_for(clients):
    setup, a, b = answered_pair(clients)
    b.send()
    b.paused = True  # flow control: readable, but the loop would not read it
    setup.put(a, "put a2", 10)
    assert setup.journal.synced_sizes == [120, 130] and setup.wakes == 0


async def test_a_closed_client_is_not_waited_for(clients):
    setup, a, b = answered_pair(clients)
    setup.gc.forget(b)
    setup.put(a, "put a2", 10)
    assert setup.journal.synced_sizes == [120, 130] and setup.wakes == 0


async def test_a_client_that_closed_while_its_reply_waited_is_not_waited_for(clients):
    # As connection.py's connection_lost does: the hub forgets it, then its socket number
    # is -1. Its reply, released by the fsync after, must not make it expected again (a
    # review found the server then waiting on the closed socket: select failed, EBADF,
    # and the flush broke off; test_e2e_commit_wait.py has that on the real server).
    setup = Setup()
    a, b, c = clients(setup.log, "a", "b", "c")
    setup.answered(a, b, c)
    b.send()
    setup.put(c, "put c2", 10)  # waits, for a and b
    assert setup.wakes == 1
    setup.gc.forget(c)
    c.wait_fd = -1
    c.close()
    setup.put(a, "put a2", 11)
    setup.put(b, "put b2", 12)  # all in: the fsync runs and answers a, b and the gone c
    assert setup.journal.synced_sizes == [130, 160]
    b.send()  # a and b are expected again, c is not: so a's next put waits for b's
    wakes = setup.wakes
    setup.put(a, "put a3", 13)
    assert setup.journal.synced_sizes == [130, 160] and setup.wakes == wakes + 1
    setup.put(b, "put b3", 14)
    assert setup.journal.synced_sizes == [130, 160, 180]


async def test_a_select_that_fails_runs_the_fsync(clients):
    setup, a, b = answered_pair(clients)
    b.sock.close()  # its number is now no socket at all, as if it closed unseen
    setup.put(a, "put a2", 10)
    assert setup.journal.synced_sizes == [120, 130] and setup.wakes == 0


async def test_a_receive_goes_out_while_another_connections_group_waits(clients):
    # The point of waiting: a consumer's receive of a message on disk is answered during
    # the wait (its connection has nothing waiting), so its ack can join the group.
    setup = Setup()
    producer, consumer = clients(setup.log, "producer", "consumer")
    setup.answered(producer, consumer)  # puts 1 and 2 are on disk
    consumer.send()
    setup.put(producer, "put 10", 10)
    assert setup.wakes == 1
    consumer.read()  # the loop reads the receive; the ack is sent as soon as it is answered
    consumer.send()
    setup.gc.submit([(consumer, out("receive 1", newest_shown=1))], durable=False)
    assert setup.labels()[-1] == "receive 1"  # out at once, before the fsync
    assert setup.journal.synced_sizes == [120] and setup.wakes == 2  # and the ack is read
    setup.journal.write(10)
    setup.submit(consumer, out("ack 1"), durable=True)  # the ack joins; no one left
    assert setup.journal.synced_sizes == [120, 140]
    # The ack, newest in the group, is answered first: its consumer has a receive and
    # an ack to send before the next group is whole, the producer one put.
    assert setup.labels()[-3:] == ["receive 1", "ack 1", "put 10"]


async def test_one_fsync_releasing_several_batches_expects_every_client_it_answered(clients):
    # The next wait expects the connections whose durable replies the fsync released, from
    # every batch it released: not a failed write's, nor one that needed no fsync.
    setup = Setup()
    a, b, e, c, d = clients(setup.log, "a", "b", "e", "c", "d")
    setup.answered(a, b, e)
    expected: list[list[str]] = []
    expect = setup.wait.expect
    setup.wait.expect = lambda conns: (expected.append([conn.name for conn in conns]),
                                       expect(conns))[1]
    b.send()
    setup.put(a, "put a2", 10)  # waits: b has sent
    setup.gc.submit([(c, out("refused"))], durable=True, failed=True)  # b's second read
    e.send()
    setup.gc.submit([(d, out("stats"))], durable=False)  # waits: e has sent
    setup.put(b, "put b2", 11)
    setup.put(e, "put e2", 12)  # e's second read: nobody is left to wait for
    assert setup.journal.synced_sizes == [130, 160]
    assert setup.labels()[3:] == ["put e2", "put b2", "stats", "refused", "put a2"]
    assert expected == [["a", "b", "e"]]


async def test_a_receive_still_waits_behind_a_reply_of_its_own_connection(clients):
    setup, a, b = answered_pair(clients)
    b.send()
    setup.put(a, "put a2", 10)  # waiting, for b
    setup.submit(a, out("receive 1", newest_shown=1), durable=False)
    assert setup.labels() == ["put a", "put b"]  # a's receive waits behind its put
    setup.put(b, "put b2", 11)
    assert setup.labels()[2:] == ["put b2", "put a2", "receive 1"]  # b's batch is newest


async def test_a_receive_of_a_message_not_on_disk_waits_during_the_wait(clients):
    setup = Setup()
    producer, consumer = clients(setup.log, "producer", "consumer")
    setup.answered(producer, consumer)
    consumer.send()
    setup.put(producer, "put 10", 10)
    setup.submit(consumer, out("receive 10", newest_shown=10), durable=False)
    # Message 10's put is not on disk: the receive waits, and its consumer, whose next
    # request cannot come before that reply, is not waited for any more.
    assert setup.journal.synced_sizes == [120, 130]
    assert setup.journal.sent_before_sync == [0, 2]  # nothing went out before the fsync
    assert setup.labels()[-2:] == ["receive 10", "put 10"]  # then newest first


async def test_drain_stops_the_waiting(clients):
    setup, a, b = answered_pair(clients)
    b.send()
    setup.put(a, "put a2", 10)
    assert setup.journal.synced_sizes == [120]
    await asyncio.wait_for(setup.gc.drain(), 10)  # stopping: nothing more is coming
    assert setup.journal.synced_sizes == [120, 130] and setup.labels()[-1] == "put a2"
    setup.put(b, "put b2", 11)  # and nothing waits again
    assert setup.journal.synced_sizes == [120, 130, 140]


def test_a_connection_with_no_socket_is_not_expected():
    class Unknown:
        wait_fd, paused = -1, False

    wait = CommitWait(0.001, LONG_GAP_S)
    wait.expect([Unknown()])
    assert not wait.expecting and not wait.hold()


async def test_clients_on_sockets_numbered_past_select_s_limit_are_waited_for(clients):
    # Through the epoll set (the rules): b's next put is read before the fsync, as on a
    # low-numbered socket, and a, low, is waited for beside it.
    setup = Setup()
    a, b, c = clients(setup.log, "a", "b", "c")
    b.renumber_high()
    c.renumber_high()
    assert b.wait_fd >= FD_SETSIZE and c.wait_fd >= FD_SETSIZE
    setup.answered(a, b, c)
    b.send()
    setup.put(c, "put c2", 10)
    assert setup.journal.synced_sizes == [130] and setup.wakes == 1  # put off: read b
    a.send()
    setup.put(b, "put b2", 11)
    assert setup.journal.synced_sizes == [130] and setup.wakes == 2  # and a
    setup.put(a, "put a2", 12)
    assert setup.journal.synced_sizes == [130, 160]
    assert setup.labels()[3:] == ["put a2", "put b2", "put c2"]


async def test_a_high_numbered_client_that_stays_silent_costs_one_gap(clients):
    setup = Setup(gap_s=0.001)
    a, b = clients(setup.log, "a", "b")
    b.renumber_high()
    setup.answered(a, b)
    setup.put(a, "put a2", 10)  # b sends nothing: after one gap, the fsync runs
    assert setup.journal.synced_sizes == [120, 130] and setup.wakes == 0


async def test_a_high_numbered_client_closed_unseen_runs_the_fsync(clients):
    setup = Setup()
    a, b = clients(setup.log, "a", "b")
    b.renumber_high()
    setup.answered(a, b)
    os.close(b.wait_fd)  # its number is now no socket at all
    b._high_fd = -1
    setup.put(a, "put a2", 10)
    assert setup.journal.synced_sizes == [120, 130] and setup.wakes == 0


def test_without_epoll_high_numbered_sockets_are_not_expected(clients, monkeypatch):
    monkeypatch.delattr(select, "epoll")  # as where there is none (not Linux)
    (client,) = clients([], "a")
    client.renumber_high()
    wait = CommitWait(0.001, LONG_GAP_S)
    wait.expect([client])
    assert not wait.expecting and not wait.hold()


def test_a_wait_of_zero_expects_nobody(clients):
    wait = CommitWait(0, LONG_GAP_S)
    (client,) = clients([], "a")
    client.send()
    wait.expect([client])
    assert not wait.expecting and not wait.hold()
