"""Optional e-mail copies of notifications, through an SMTP server the operator configures
(``MarketplaceApp.smtp_host``; empty, the default, sends nothing).

The outbox is the notifications table itself: a notification whose recipient turned e-mail on
(:class:`~.inbox_orm.MailSetting`), created since then and not yet ``emailed_at``, is due. A
notification exists only once its event's transaction committed, so nothing is ever mailed
about an event that rolled back. :func:`send_pending` is blocking (smtplib): the service runs
it in a worker thread, never on the event loop. Each message is marked sent in its own short
transaction right after the server accepted it, so a crash repeats at most one message.

The SMTP password comes from a file and appears in no log, message or ``repr``.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from sqlalchemy import select, update

from ..orm import utcnow, write_transaction
from .inbox import KINDS
from .inbox_orm import MailSetting, Notification

log = logging.getLogger("marketplace.mail")

SECURITY = ("none", "starttls", "ssl")
SUBJECT_PREFIX = "[Grid Data Supermarket] "


@dataclass(frozen=True)
class MailConfig:
    """Where and how to send. ``base_url`` + ``prefix`` make a notification's link absolute
    (e.g. ``https://hub.example.org`` + ``/services/marketplace/``)."""

    host: str
    port: int = 25
    sender: str = "marketplace@localhost"
    security: str = "none"
    username: str = ""
    password: str = field(default="", repr=False)
    base_url: str = ""
    prefix: str = "/services/marketplace/"
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.security not in SECURITY:
            raise ValueError(f"smtp_security must be one of {', '.join(SECURITY)}, not "
                             f"{self.security!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.host)


def _one_line(text: str) -> str:
    """Header text: no CR, LF or other control characters (no header injection)."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def compose(n: Notification, address: str, config: MailConfig) -> EmailMessage:
    """The message telling ``n`` to ``address``: plain text, the link made absolute."""
    msg = EmailMessage()
    msg["From"] = config.sender
    msg["To"] = address
    msg["Subject"] = _one_line(SUBJECT_PREFIX + n.subject)[:300]
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=config.sender.rpartition("@")[2] or "localhost")
    lines = [n.subject, ""]
    if n.body:
        lines += [n.body, ""]
    if n.link:
        lines += [f"{config.base_url.rstrip('/')}{config.prefix}{n.link}", ""]
    lines += ["--", f"{KINDS.get(n.kind, n.kind)}. You receive this because you turned on "
              "e-mail copies of your marketplace inbox; turn them off on the inbox page."]
    msg.set_content("\n".join(lines))
    return msg


def pending(session, limit: int = 100) -> list[tuple[int, str]]:
    """(notification id, address) of the notifications due, oldest first."""
    rows = session.execute(
        select(Notification.id, MailSetting.address)
        .join(MailSetting, MailSetting.user_name == Notification.user_name)
        .where(Notification.emailed_at.is_(None), MailSetting.enabled.is_(True),
               Notification.created_at >= MailSetting.since)
        .order_by(Notification.id).limit(limit))
    return [(i, a) for i, a in rows]


def _connect(config: MailConfig) -> smtplib.SMTP:
    if config.security == "ssl":
        server: smtplib.SMTP = smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout,
                                                context=ssl.create_default_context())
    else:
        server = smtplib.SMTP(config.host, config.port, timeout=config.timeout)
        if config.security == "starttls":
            server.starttls(context=ssl.create_default_context())
    if config.username:
        server.login(config.username, config.password)
    return server


def _mark(session_factory, ids: list[int]) -> None:
    with session_factory() as session:
        write_transaction(session)
        session.execute(update(Notification).where(Notification.id.in_(ids))
                        .values(emailed_at=utcnow()).execution_options(synchronize_session=False))
        session.commit()


def send_pending(session_factory, config: MailConfig, limit: int = 100) -> int:
    """Send the due notifications (at most ``limit``); returns how many the server accepted.
    Blocking: run it in a worker thread. A server that cannot be reached or refuses the login
    stops the pass (the rest waits for the next one); an address the server refuses is
    skipped for good (logged by user name, never the address)."""
    if not config.enabled:
        return 0
    with session_factory() as session:
        due = pending(session, limit)
        messages = []
        for ident, address in due:
            n = session.get(Notification, ident)
            messages.append((ident, n.user_name, compose(n, address, config)))
    if not messages:
        return 0
    sent = 0
    try:
        server = _connect(config)
    except (OSError, smtplib.SMTPException) as e:
        log.warning("SMTP server %s:%s unavailable (%s); %d notification(s) wait",
                    config.host, config.port, type(e).__name__, len(messages))
        return 0
    try:
        for ident, user, msg in messages:
            try:
                server.send_message(msg)
            except smtplib.SMTPRecipientsRefused:
                log.warning("the SMTP server refused %s's address; notification %s not mailed",
                            user, ident)
            except (OSError, smtplib.SMTPException) as e:
                log.warning("sending notification %s failed (%s); retrying later", ident,
                            type(e).__name__)
                break
            else:
                sent += 1
            _mark(session_factory, [ident])
    finally:
        try:
            server.quit()
        except (OSError, smtplib.SMTPException):
            server.close()
    return sent
