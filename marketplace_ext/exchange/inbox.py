"""The inbox: notifications per user, written in the same transaction as the event they tell
about (so a rolled-back purchase or decision notifies nobody).

Other concerns call :func:`notify` or :func:`notify_unit`; nothing here reaches into their
tables except ``members`` (``units.py``'s) to find a unit's people.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..orm import Member, Unit
from .inbox_orm import Notification

# every kind a notification may have; the inbox page groups and labels them
KINDS = {
    "version_decided": "A version was approved or rejected",
    "m2d_waiting": "A model-to-data request waits for you",
    "m2d_decided": "A model-to-data request was decided",
    "fl_round_opened": "A federated round opened",
    "fl_round_closing": "A federated round is about to close",
    "topic_assigned": "A topic was assigned",
    "topic_accepted": "A topic's delivery was accepted",
    "bounty_paid": "A bounty was paid",
    "workshop_reminder": "A workshop is coming up",
    "review_new": "A new review of your product",
    "mention": "You were mentioned",
}


def notify(session: Session, recipients: Iterable[str], kind: str, subject: str,
           link: str = "", body: str = "") -> int:
    """Add one notification per distinct recipient (hub user names); returns how many.
    ``link`` is relative to the marketplace's prefix, e.g. ``products/theft``."""
    if kind not in KINDS:
        raise ValueError(f"unknown notification kind {kind!r}")  # a bug, never user input
    names = sorted(set(recipients))
    for name in names:
        session.add(Notification(user_name=name, kind=kind, subject=subject[:300],
                                 link=link.lstrip("/")[:500], body=body))
    session.flush()
    return len(names)


def unit_member_names(session: Session, unit: Unit | int) -> list[str]:
    unit_id = unit if isinstance(unit, int) else unit.id
    return list(session.scalars(select(Member.user_name).where(Member.unit_id == unit_id)))


def notify_unit(session: Session, unit: Unit | int, kind: str, subject: str, link: str = "",
                body: str = "", exclude: Iterable[str] = ()) -> int:
    """Notify every member of ``unit`` except ``exclude`` (usually the actor)."""
    skip = set(exclude)
    names = [n for n in unit_member_names(session, unit) if n not in skip]
    return notify(session, names, kind, subject, link, body)
