"""Units and memberships in the database, on SQLite and PostgreSQL; migrations vs. models."""

import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select

from marketplace_ext import dbutil, units
from marketplace_ext.errors import Conflict, InvalidField, NotFound
from marketplace_ext.orm import (
    Base,
    Member,
    Unit,
    make_engine,
    write_transaction,
)


def test_migrations_match_models(db_url):
    dbutil.upgrade(db_url)
    assert dbutil.current_revision(db_url) == dbutil.head_revision()
    engine = make_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
    dbutil.check(db_url)


def test_check_refuses_unmigrated_database(db_url):
    with pytest.raises(dbutil.DatabaseSchemaMismatch, match="market db upgrade"):
        dbutil.check(db_url)


def test_create_and_list_units(session_factory):
    with session_factory() as s:
        units.create_unit(s, "a", "Provincial Company A", "op")
        units.create_unit(s, "b", "  Provincial Company B ", "op")
        s.commit()
    with session_factory() as s:
        listed = [(u.slug, u.name, n) for u, n in units.list_units(s)]
    assert listed == [("a", "Provincial Company A", 0), ("b", "Provincial Company B", 0)]


@pytest.mark.parametrize(
    "slug,name,field",
    [("", "x", "slug"), ("A", "x", "slug"), ("1a", "x", "slug"), ("a-b", "x", "slug"),
     ("a" * 32, "x", "slug"), (None, "x", "slug"), ("ok", "", "name"), ("ok", "x" * 201, "name"),
     ("ok", 5, "name")],
)
def test_bad_unit_fields_name_the_field(session_factory, slug, name, field):
    with session_factory() as s:
        with pytest.raises(InvalidField) as e:
            units.create_unit(s, slug, name, "op")
        assert e.value.field == field
        s.rollback()
        assert s.scalar(select(func.count()).select_from(Unit)) == 0


def test_duplicate_slug_conflicts(session_factory):
    with session_factory() as s:
        units.create_unit(s, "a", "A", "op")
        s.commit()
        with pytest.raises(Conflict) as e:
            units.create_unit(s, "a", "Other A", "op")
        assert e.value.field == "slug"


def test_user_in_exactly_one_unit(session_factory):
    with session_factory() as s:
        units.create_unit(s, "a", "A", "op")
        units.create_unit(s, "b", "B", "op")
        member, created = units.add_member(s, "a", "alice", "op")
        assert created
        # idempotent within the same unit
        assert units.add_member(s, "a", "alice", "op")[1] is False
        with pytest.raises(Conflict) as e:
            units.add_member(s, "b", "alice", "op")
        assert e.value.field == "user" and "'a'" in e.value.message
        with pytest.raises(NotFound) as e:
            units.add_member(s, "zz", "bob", "op")
        assert e.value.field == "unit"
        with pytest.raises(InvalidField):
            units.add_member(s, "a", "Bad Name/", "op")
        s.commit()
        assert units.unit_of(s, "alice").slug == "a"
        assert units.unit_of(s, "bob") is None
        units.remove_member(s, "a", "alice")
        with pytest.raises(NotFound):
            units.remove_member(s, "a", "alice")
        s.commit()
        assert units.unit_of(s, "alice") is None


def test_concurrent_adds_to_two_units_keep_one(session_factory):
    """Two operators put the same user in different units at the same time: exactly one wins."""
    with session_factory() as s:
        for slug in "ab":
            units.create_unit(s, slug, slug.upper(), "op")
        s.commit()
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def attempt(slug: str) -> None:
        with session_factory() as s:
            barrier.wait()
            write_transaction(s)
            try:
                units.add_member(s, slug, "carol", "op")
                s.commit()
                outcomes.append(slug)
            except Conflict:
                s.rollback()
                outcomes.append("conflict")
            except Exception as e:  # a lost race may surface as an integrity error at commit
                s.rollback()
                outcomes.append(f"error:{type(e).__name__}")

    threads = [threading.Thread(target=attempt, args=("ab"[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with session_factory() as s:
        rows = s.scalars(select(Member).where(Member.user_name == "carol")).all()
        assert len(rows) == 1
        winner = rows[0].unit.slug
    assert all(o in (winner, "conflict") for o in outcomes), outcomes
