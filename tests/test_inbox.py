"""The inbox against the real databases: notifications in the event's transaction (a rollback
notifies nobody), unread counts, paging, marking read (only one's own), the e-mail setting, and
the optional e-mail copy sent through a local aiosmtpd debug SMTP server (off by default)."""

from __future__ import annotations

import email
import email.policy
import smtplib
from datetime import timedelta

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import select

from marketplace_ext import dbutil, points, units
from marketplace_ext.errors import InvalidField, NotFound
from marketplace_ext.exchange import inbox, mail
from marketplace_ext.exchange.inbox_orm import Notification
from marketplace_ext.launcher import free_port
from marketplace_ext.orm import make_engine, make_session_factory, utcnow, write_transaction

RULES = points.EconomyRules()


@pytest.fixture
def factory(db_url):
    dbutil.upgrade(db_url)
    engine = make_engine(db_url)
    factory = make_session_factory(engine)
    with factory() as s:
        write_transaction(s)
        for slug in ("a", "b"):
            unit = units.create_unit(s, slug, slug.upper(), "test")
            points.open_account(s, unit, RULES, "test")
        for slug, name in (("a", "alice"), ("a", "carol"), ("b", "bob")):
            units.add_member(s, slug, name, "test")
        s.commit()
    yield factory
    engine.dispose()


def test_notify_unit_skips_the_actor_and_a_rollback_notifies_nobody(factory):
    with factory() as s:
        write_transaction(s)
        unit = units.get_unit(s, "a")
        assert inbox.notify_unit(s, unit, "review_new", "A review", "products/x",
                                 exclude=["alice"]) == 1
        s.rollback()  # the event failed: its notification goes with it
    with factory() as s:
        assert inbox.unread_count(s, "carol") == 0
        write_transaction(s)
        assert inbox.notify_unit(s, units.get_unit(s, "a"), "review_new", "A review",
                                 "/products/x", exclude=["alice"], ref="review:1") == 1
        s.commit()
        assert inbox.unread_count(s, "carol") == 1 and inbox.unread_count(s, "alice") == 0
        assert inbox.already_notified(s, "review_new", "review:1")
        assert not inbox.already_notified(s, "review_new", "review:2")
        with pytest.raises(ValueError):
            inbox.notify(s, ["carol"], "no_such_kind", "x")


def test_paging_unread_filter_and_marking_read(factory):
    with factory() as s:
        write_transaction(s)
        for i in range(30):
            inbox.notify(s, ["alice"], "mention", f"note {i}", f"forum/{i}")
        inbox.notify(s, ["bob"], "mention", "bob's own")
        s.commit()
        rows, total = inbox.list_notifications(s, "alice", page=1, per_page=10)
        assert total == 30 and [r.subject for r in rows] == [f"note {i}" for i in
                                                             range(29, 19, -1)]
        rows, _ = inbox.list_notifications(s, "alice", page=3, per_page=10)
        assert rows[-1].subject == "note 0"
        ids = [r.id for r in rows[:3]]
        bobs = s.scalar(select(Notification.id).where(Notification.user_name == "bob"))
        # someone else's notification is not found, and nothing is marked
        write_transaction(s)
        with pytest.raises(NotFound) as e:
            inbox.mark_read(s, "alice", [*ids, bobs])
        assert e.value.field == "ids"
        s.rollback()
        assert inbox.unread_count(s, "alice") == 30 and inbox.unread_count(s, "bob") == 1
        write_transaction(s)
        assert inbox.mark_read(s, "alice", ids) == 3
        assert inbox.mark_read(s, "alice", ids) == 0  # marking twice changes nothing
        s.commit()
        assert inbox.unread_count(s, "alice") == 27
        unread, total = inbox.list_notifications(s, "alice", unread_only=True, per_page=100)
        assert total == 27 and not set(ids) & {n.id for n in unread}
        shown = inbox.notification_json(rows[0])
        assert shown["read"] and shown["kind_label"] == inbox.KINDS["mention"]
        write_transaction(s)
        assert inbox.mark_read(s, "alice") == 27
        s.commit()
        assert inbox.unread_count(s, "alice") == 0 and inbox.unread_count(s, "bob") == 1


@pytest.mark.parametrize("body, field", [
    ({}, "ids"), ({"ids": []}, "ids"), ({"ids": ["1"]}, "ids"), ({"ids": [True]}, "ids"),
    ({"ids": [0]}, "ids"), ({"ids": list(range(1, 502))}, "ids"), ({"all": "yes"}, "all"),
    ({"all": True, "ids": [1]}, "all"), ({"all": False}, "all"), ({"every": True}, "every"),
])
def test_mark_requests_name_the_bad_field(body, field):
    with pytest.raises(InvalidField) as e:
        inbox.parse_mark_request(body)
    assert e.value.field == field


def test_mail_setting_validates_and_turns_off(factory):
    with factory() as s:
        write_transaction(s)
        for body, field in [({"enabled": "yes"}, "enabled"), ({"enabled": True}, "email"),
                            ({"enabled": True, "email": "no-at-sign"}, "email"),
                            ({"enabled": True, "email": "a@b.org\r\nBcc: x@evil.org"}, "email"),
                            ({"enabled": True, "email": "a@b.org", "cc": "x"}, "cc")]:
            with pytest.raises(InvalidField) as e:
                inbox.set_mail_setting(s, "alice", body)
            assert e.value.field == field, body
        setting = inbox.set_mail_setting(s, "alice", {"enabled": True, "email": "alice@a.example"})
        s.commit()
        assert inbox.mail_setting_json(setting, True) == {
            "enabled": True, "email": "alice@a.example", "mail_available": True}
        write_transaction(s)
        assert inbox.set_mail_setting(s, "alice", {"enabled": False}) is None
        s.commit()
        assert inbox.mail_setting(s, "alice") is None


class Collector:
    """An aiosmtpd handler that keeps every message it accepts."""

    def __init__(self):
        self.messages: list[tuple[list[str], email.message.Message]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((list(envelope.rcpt_tos),
                              email.message_from_bytes(envelope.original_content,
                                                        policy=email.policy.default)))
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.endswith("@refused.example"):
            return "550 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"


@pytest.fixture
def smtp_server():
    collector = Collector()

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"market" \
            and auth_data.password == b"s3cret-pass"
        # handled=False: the server answers a refusal itself (535)
        return AuthResult(success=ok, handled=False)

    controller = Controller(collector, hostname="127.0.0.1", port=free_port(),
                            authenticator=authenticate, auth_require_tls=False)
    controller.start()
    yield controller, collector
    controller.stop()


def test_mail_is_off_by_default_and_sends_only_what_was_opted_into(factory, smtp_server):
    controller, collector = smtp_server
    config = mail.MailConfig(host="127.0.0.1", port=controller.port, sender="market@grid.example",
                             username="market", password="s3cret-pass",
                             base_url="https://hub.grid.example")
    assert "s3cret-pass" not in repr(config)
    with factory() as s:
        write_transaction(s)
        # before alice turns e-mail on: never mailed
        inbox.notify(s, ["alice"], "mention", "old news")
        s.commit()
    with factory() as s:
        write_transaction(s)
        # a moment later (created_at is the since boundary)
        inbox.set_mail_setting(s, "alice", {"enabled": True, "email": "alice@a.example"},
                               now=utcnow() + timedelta(microseconds=1))
        inbox.set_mail_setting(s, "carol", {"enabled": True, "email": "carol@refused.example"})
        s.commit()
    with factory() as s:
        write_transaction(s)
        inbox.notify(s, ["alice", "bob", "carol"], "version_decided",
                     "Version 1.0.1 of theft was approved\r\nBcc: victim@evil.example",
                     "products/theft", body="It is on the shelf now.")
        s.commit()
    # off (no host): nothing is sent and nothing is marked
    assert mail.send_pending(factory, mail.MailConfig(host="")) == 0
    assert collector.messages == []
    assert mail.send_pending(factory, config) == 1
    assert len(collector.messages) == 1
    rcpts, msg = collector.messages[0]
    assert rcpts == ["alice@a.example"]
    assert msg["To"] == "alice@a.example" and msg["From"] == "market@grid.example"
    assert msg["Subject"] == ("[Grid Data Supermarket] Version 1.0.1 of theft was approved "
                              "Bcc: victim@evil.example")
    assert msg["Bcc"] is None
    text = msg.get_content()
    assert "https://hub.grid.example/services/marketplace/products/theft" in text
    assert "It is on the shelf now." in text
    # sent once: the next pass finds nothing (carol's refused address is not retried)
    assert mail.send_pending(factory, config) == 0
    assert len(collector.messages) == 1
    with factory() as s:
        marked = dict(s.execute(select(Notification.user_name, Notification.emailed_at)
                                .where(Notification.kind == "version_decided")).all())
        assert marked["alice"] is not None and marked["carol"] is not None
        assert marked["bob"] is None  # bob never turned e-mail on


def test_a_refused_login_or_unreachable_server_keeps_the_mail_waiting(factory, smtp_server):
    controller, collector = smtp_server
    with factory() as s:
        write_transaction(s)
        inbox.set_mail_setting(s, "bob", {"enabled": True, "email": "bob@b.example"},
                               now=utcnow() - timedelta(seconds=1))
        inbox.notify(s, ["bob"], "m2d_waiting", "A request waits")
        s.commit()
    wrong = mail.MailConfig(host="127.0.0.1", port=controller.port, username="market",
                            password="wrong")
    assert mail.send_pending(factory, wrong) == 0
    closed_port = free_port()
    assert mail.send_pending(factory, mail.MailConfig(host="127.0.0.1", port=closed_port,
                                                      timeout=5)) == 0
    assert collector.messages == []
    good = mail.MailConfig(host="127.0.0.1", port=controller.port, username="market",
                           password="s3cret-pass")
    assert mail.send_pending(factory, good) == 1
    assert [r for r, _ in collector.messages] == [["bob@b.example"]]
    with pytest.raises(ValueError):
        mail.MailConfig(host="x", security="tls1.0")
    # smtplib is what we speak: the debug server is a real SMTP server
    with smtplib.SMTP("127.0.0.1", controller.port, timeout=5) as client:
        assert client.noop()[0] == 250


# --- the hooks of existing events ---------------------------------------------------------------


def test_federated_rounds_notify_when_opened_and_before_they_close(factory, tmp_path):
    """Opening a round tells every member unit's people; when a quarter of its window is left,
    the units that have not sent their update are told once."""
    import base64

    from helpers import save_model

    from marketplace_ext.auth import SCOPE_PUBLISH, SCOPE_SUBSCRIBE, Caller
    from marketplace_ext.blobs import BlobStore
    from marketplace_ext.federated import enrolment, keys, projects, rounds
    from marketplace_ext.federated.client import bundle_zip

    def pub(unit: str) -> Caller:
        return Caller(f"publisher-{unit}", frozenset({SCOPE_SUBSCRIBE, SCOPE_PUBLISH}), unit)

    public, _ = keys.generate_paillier_keypair(2048)
    model = base64.b64encode(bundle_zip(save_model(tmp_path / "model"))).decode()
    with factory() as s:
        write_transaction(s)
        units.add_member(s, "a", "publisher-a", "test")
        units.add_member(s, "b", "publisher-b", "test")
        req = projects.parse_project_request({
            "name": "feeder-loss", "title": "Feeder loss", "rounds": 2, "quorum": 2,
            "deadline_seconds": 600, "allow_units": ["b"],
            "public_key": keys.public_key_to_json(public), "model": model})
        project = projects.create_project(s, pub("a"), req, BlobStore(tmp_path / "blobs"))
        enrolment.join(s, pub("b"), project, None)
        s.commit()
        assert s.scalars(select(Notification)).all() == []
        write_transaction(s)
        rnd = rounds.start(s, pub("a"), project)
        s.commit()
        opened = s.scalars(select(Notification).where(Notification.kind == "fl_round_opened")
                           ).all()
        # every member of both units, the initiator included (a round is news to all)
        assert sorted(n.user_name for n in opened) == ["alice", "bob", "carol", "publisher-a",
                                                       "publisher-b"]
        assert {n.link for n in opened} == {f"fl/{project.id}"}
        assert opened[0].subject == "Round 1 of “Feeder loss” is open"
        # more than a quarter of the window left: nobody is warned yet
        assert rounds.warn_closing(s, rnd.deadline - timedelta(seconds=151)) == 0
        assert rounds.warn_closing(s, rnd.deadline - timedelta(seconds=149)) == 5
        assert rounds.warn_closing(s, rnd.deadline - timedelta(seconds=10)) == 0  # once only
        s.commit()
        closing = s.scalars(select(Notification).where(Notification.kind == "fl_round_closing")
                            ).all()
        assert len(closing) == 5 and "closes at" in closing[0].subject
