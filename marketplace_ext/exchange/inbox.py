"""The inbox: notifications per user, written in the same transaction as the event they tell
about (so a rolled-back purchase or decision notifies nobody); read and unread, paging, marking
read, and each user's optional e-mail copy (sent by :mod:`.mail` after the commit).

Other concerns call :func:`notify` or :func:`notify_unit`; nothing here reaches into their
tables except ``members`` (``units.py``'s) to find a unit's people.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ..errors import InvalidField, NotFound
from ..ids import json_int
from ..orm import Member, Unit, utcnow
from .inbox_orm import MailSetting, Notification

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
    "topic_delivered": "A topic's delivery waits for your decision",
    "topic_rejected": "A topic's delivery was rejected",
    "workshop_reminder": "A workshop is coming up",
    "review_new": "A new review of your product",
    "mention": "You were mentioned",
}

#: the most notifications one page of the inbox (or one ``mark read`` request) covers
MAX_PAGE = 100
MAX_MARK = 500
#: a deliberately plain check (one @, a dot in the domain, no spaces or controls): the SMTP
#: server has the last word; this only keeps obvious mistakes and header tricks out
EMAIL_RE = re.compile(r"[^@\s\x00-\x1f\x7f<>,;\"]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")


def notify(session: Session, recipients: Iterable[str], kind: str, subject: str,
           link: str = "", body: str = "", ref: str = "") -> int:
    """Add one notification per distinct recipient (hub user names); returns how many.
    ``link`` is relative to the marketplace's prefix, e.g. ``products/theft``; ``ref`` names
    the event where it must be told once only (see :func:`already_notified`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown notification kind {kind!r}")  # a bug, never user input
    names = sorted(set(recipients))
    for name in names:
        session.add(Notification(user_name=name, kind=kind, subject=subject[:300],
                                 link=link.lstrip("/")[:500], body=body, ref=ref[:100]))
    session.flush()
    return len(names)


def unit_member_names(session: Session, unit: Unit | int) -> list[str]:
    unit_id = unit if isinstance(unit, int) else unit.id
    return list(session.scalars(select(Member.user_name).where(Member.unit_id == unit_id)))


def notify_unit(session: Session, unit: Unit | int, kind: str, subject: str, link: str = "",
                body: str = "", exclude: Iterable[str] = (), ref: str = "") -> int:
    """Notify every member of ``unit`` except ``exclude`` (usually the actor)."""
    skip = set(exclude)
    names = [n for n in unit_member_names(session, unit) if n not in skip]
    return notify(session, names, kind, subject, link, body, ref)


def already_notified(session: Session, kind: str, ref: str) -> bool:
    """Whether event ``ref`` of ``kind`` has been told to anybody yet."""
    return session.scalar(select(Notification.id).where(
        Notification.kind == kind, Notification.ref == ref).limit(1)) is not None


# --- reading and marking ---------------------------------------------------------------------


def unread_count(session: Session, user: str) -> int:
    """The number in the navigation: the user's notifications not yet read."""
    return session.scalar(select(func.count()).select_from(Notification).where(
        Notification.user_name == user, Notification.read_at.is_(None))) or 0


def list_notifications(session: Session, user: str, unread_only: bool = False, page: int = 1,
                       per_page: int = 20) -> tuple[list[Notification], int]:
    """One page of the user's notifications, newest first, and how many there are in all
    (of the same filter). ``page`` counts from 1."""
    if not 1 <= per_page <= MAX_PAGE:
        raise InvalidField(f"per_page must be between 1 and {MAX_PAGE}", "per_page")
    if page < 1:
        raise InvalidField("page must be 1 or more", "page")
    where = [Notification.user_name == user]
    if unread_only:
        where.append(Notification.read_at.is_(None))
    total = session.scalar(select(func.count()).select_from(Notification).where(*where)) or 0
    rows = session.scalars(select(Notification).where(*where)
                           .order_by(Notification.id.desc())
                           .offset((page - 1) * per_page).limit(per_page))
    return list(rows), total


def inbox_page(session: Session, user: str, unread_only: bool = False, page: int = 1,
               per_page: int = 20) -> dict:
    """One read for an inbox page: the notifications as JSON, their total (of the filter)
    and the unread count."""
    rows, total = list_notifications(session, user, unread_only, page, per_page)
    return {"notifications": [notification_json(n) for n in rows], "total": total,
            "unread": unread_count(session, user)}


def parse_mark_request(body: dict) -> list[int] | None:
    """``{"ids": [1, 2]}`` or ``{"all": true}`` -> the ids, or None for all; 400 naming the
    field otherwise."""
    unknown = set(body) - {"ids", "all"}
    if unknown:
        raise InvalidField(f"unknown field {sorted(unknown)[0]!r}", sorted(unknown)[0])
    if "all" in body:
        if body["all"] is not True or "ids" in body:
            raise InvalidField('all must be true, alone: {"all": true}', "all")
        return None
    ids = body.get("ids")
    if isinstance(ids, list):  # 3.0 is the integer 3 in JSON
        ids = [json_int(i) for i in ids]
    if not isinstance(ids, list) or not ids or len(ids) > MAX_MARK or not all(
            isinstance(i, int) and not isinstance(i, bool) and 1 <= i < 2**63 for i in ids):
        raise InvalidField(f"ids must be a list of 1 to {MAX_MARK} notification ids (or send "
                           '{"all": true})', "ids")
    return sorted(set(ids))


def mark_read(session: Session, user: str, ids: list[int] | None = None,
              now: datetime | None = None) -> int:
    """Mark the user's notifications ``ids`` (all of them with None) read; returns how many
    changed. An id that is not the user's is a 404 naming ``ids`` and nothing is marked."""
    now = now or utcnow()
    where = [Notification.user_name == user, Notification.read_at.is_(None)]
    if ids is not None:
        own = set(session.scalars(select(Notification.id).where(
            Notification.user_name == user, Notification.id.in_(ids))))
        missing = [i for i in ids if i not in own]
        if missing:
            raise NotFound(f"no notification {missing[0]} in your inbox", "ids")
        where.append(Notification.id.in_(ids))
    result = session.execute(update(Notification).where(*where).values(read_at=now)
                             .execution_options(synchronize_session=False))
    session.flush()
    return result.rowcount or 0


def link_of(session: Session, user: str, ident: int) -> str:
    """The link of the user's notification ``ident`` (404 naming ``id`` if not theirs)."""
    n = session.get(Notification, ident)
    if n is None or n.user_name != user:
        raise NotFound(f"no notification {ident} in your inbox", "id")
    return n.link


def notification_json(n: Notification) -> dict:
    return {"id": n.id, "kind": n.kind, "kind_label": KINDS.get(n.kind, n.kind),
            "subject": n.subject, "body": n.body, "link": n.link,
            "created_at": n.created_at.isoformat() + "Z",
            "read": n.read_at is not None,
            "read_at": n.read_at.isoformat() + "Z" if n.read_at else None}


# --- e-mail settings -------------------------------------------------------------------------


def mail_setting(session: Session, user: str) -> MailSetting | None:
    return session.get(MailSetting, user)


def set_mail_setting(session: Session, user: str, body: dict,
                     now: datetime | None = None) -> MailSetting | None:
    """``{"email": "a@b.example", "enabled": true}`` turns the e-mail copy on (from now on:
    older notifications are never mailed); ``{"enabled": false}`` turns it off (the address
    is forgotten). 400 naming the field for anything else."""
    unknown = set(body) - {"email", "enabled"}
    if unknown:
        raise InvalidField(f"unknown field {sorted(unknown)[0]!r}", sorted(unknown)[0])
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        raise InvalidField("enabled must be true or false", "enabled")
    address = body.get("email")
    if address is not None and (not isinstance(address, str) or len(address) > 254):
        raise InvalidField("email must be an e-mail address of at most 254 characters", "email")
    current = session.get(MailSetting, user)
    if not enabled:
        if current is not None:
            session.delete(current)
            session.flush()
        return None
    if not isinstance(address, str) or not EMAIL_RE.fullmatch(address):
        raise InvalidField("email must be an e-mail address such as name@example.org", "email")
    now = now or utcnow()
    if current is None:
        current = MailSetting(user_name=user, address=address, enabled=True, since=now)
        session.add(current)
    elif current.address != address:
        current.address, current.since = address, now
    session.flush()
    return current


def mail_setting_json(setting: MailSetting | None, mail_available: bool) -> dict:
    return {"enabled": setting is not None, "email": setting.address if setting else None,
            "mail_available": mail_available}


def mail_setting_reading(session: Session, user: str, mail_available: bool) -> dict:
    """The user's e-mail copy setting as the API shows it."""
    return mail_setting_json(mail_setting(session, user), mail_available)
