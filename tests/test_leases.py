"""Leases for several service processes on one database: named leases for singleton jobs and
run leases (claim, renew, take-over of a dead holder's runs), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from helpers import make_world, notebook

from marketplace_ext import leases, run_leases
from marketplace_ext.orm import Run, utcnow, write_transaction

pytest_plugins = ["sandbox_helpers"]

DEAD_HERE = "{host}:4194303:dead"  # a pid above pid_max on this host: certainly gone


def take(session_factory, name: str, owner: str, ttl: float = 30, now=None) -> bool:
    with session_factory() as s:
        write_transaction(s)
        got = leases.acquire(s, name, owner, ttl, now)
        s.commit()
        return got


def test_a_named_lease_has_one_holder_until_it_expires(session_factory):
    now = utcnow()
    assert take(session_factory, "job", "host-a:1:x", now=now)
    assert take(session_factory, "job", "host-a:1:x", now=now)  # renewal
    assert not take(session_factory, "job", "host-b:2:y", now=now + timedelta(seconds=29))
    with session_factory() as s:
        assert leases.holder(s, "job", now + timedelta(seconds=29)) == "host-a:1:x"
        assert leases.holder(s, "job", now + timedelta(seconds=31)) is None
    # expired: taken over
    assert take(session_factory, "job", "host-b:2:y", now=now + timedelta(seconds=31))
    assert not take(session_factory, "job", "host-a:1:x", now=now + timedelta(seconds=32))
    with session_factory() as s:
        write_transaction(s)
        leases.release(s, "job", "host-a:1:x")  # not the holder: no effect
        s.commit()
    assert not take(session_factory, "job", "host-a:1:x", now=now + timedelta(seconds=33))
    with session_factory() as s:
        write_transaction(s)
        leases.release(s, "job", "host-b:2:y")
        s.commit()
    assert take(session_factory, "job", "host-a:1:x")  # released: free at once
    with pytest.raises(ValueError):
        take(session_factory, "job", "host-a:1:x", ttl=0)


def test_a_dead_holder_on_this_host_is_replaced_at_once(session_factory):
    host = leases.process_id().rsplit(":", 2)[0]
    assert take(session_factory, "job", DEAD_HERE.format(host=host))
    assert leases.holder_is_dead_here(DEAD_HERE.format(host=host))
    assert not leases.holder_is_dead_here(leases.process_id())
    assert not leases.holder_is_dead_here("some-other-host:1:x")  # never judged from afar
    assert take(session_factory, "job", leases.process_id())


def test_runs_are_claimed_once_renewed_and_taken_over_after_their_lease(db_url, tmp_path):
    engine, world = make_world(db_url, tmp_path)
    try:
        v = world.version(notebook("x: int = 1"))
        first, second = world.queue(v), world.queue(v)
        a = world.runner(exclusive=False, lease_seconds=30, max_attempts=2)
        b = world.runner(exclusive=False, lease_seconds=30, max_attempts=2)
        assert a._claim() == first and b._claim() == second and a._claim() is None
        run = world.get(first)
        assert (run.lease_owner, run.attempts) == (a.owner, 1)
        b._lease_pass([])  # a's lease is valid: b leaves its run alone
        assert world.get(first).status == "running"
        with world.sf() as s:  # a renews; not b's
            write_transaction(s)
            assert run_leases.renew(s, a.owner, [first, second], 30) == {first}
            s.commit()

        def expire(run_id: int) -> None:
            with world.sf() as s:
                write_transaction(s)
                s.get(Run, run_id).lease_expires_at = utcnow() - timedelta(seconds=1)
                s.commit()

        expire(first)  # a died: b queues its run again (attempts left), once
        b._lease_pass([])
        run = world.get(first)
        assert (run.status, run.lease_owner, run.attempts) == ("queued", None, 1)
        assert a._record(first, "succeeded", None, {}) is False  # the dead holder can't finish it
        assert b._claim() == first and world.get(first).attempts == 2
        expire(first)  # b died too: no attempt left, a fails it, with on_finished, once
        a._lease_pass([])
        a._lease_pass([])
        run = world.get(first)
        assert (run.status, run.error) == ("failed", "the service process running it stopped")
        assert world.calls(first) == ["failed"]
        assert b._record(first, "succeeded", None, {}) is False
        assert world.calls(second) == []  # b's own live run untouched throughout
    finally:
        engine.dispose()
