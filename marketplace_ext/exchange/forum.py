"""The forum: threads attached to a product, a topic request or a general category, with
posts in Markdown sanitized by nh3, @mentions that notify, operators' moderation (hide with a
reason, show again), paging and search.

A post keeps the Markdown as typed (plain text: inert as JSON and as escaped HTML) and the HTML
it renders to, cleaned by :func:`render` when it is written: a ``<script>`` is stored without its
tag and shown as text. Hidden threads and posts stay in the database; people other than
operators see only that (and why) they were hidden.
"""

from __future__ import annotations

import json
import re
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from .. import catalog
from ..auth import SCOPE_SUBSCRIBE, Caller
from ..errors import Conflict, Forbidden, InvalidField, NotFound
from ..ids import parse_id
from ..orm import Member, utcnow
from . import inbox
from .forum_orm import ForumPost, ForumThread

CATEGORIES = {
    "general": "General",
    "data": "Data and the platform",
    "models": "Models and analytics",
    "federated": "Federated learning",
    "workshops": "Workshops and competitions",
}
TARGET_KINDS = ("product", "topic", "category")
MIN_TITLE, MAX_TITLE = 3, 200
MAX_BODY = 20_000
MAX_REASON = 500
MAX_QUERY = 100
MAX_PER_PAGE = 100
#: mentions beyond this many in one post notify nobody more (a post is not a mailing list)
MAX_MENTIONS = 20
MENTION_RE = re.compile(r"(?<![\w@/.+-])@([A-Za-z0-9][A-Za-z0-9._-]{0,63})")
_CODE_RE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def render(markdown: str) -> str:
    """A post's HTML: Markdown through mistune, then nh3 (the product card's sanitizer)."""
    return catalog.render_readme(markdown)


def mentioned_names(text: str) -> list[str]:
    """The ``@names`` a post's text mentions, in order, without repeats; code spans and
    blocks, e-mail addresses and paths do not mention anyone."""
    found: list[str] = []
    for match in MENTION_RE.finditer(_CODE_RE.sub(" ", text)):
        name = match.group(1).rstrip("._-")
        if name and name not in found:
            found.append(name)
    return found


def _known_users(session: Session, names: list[str]) -> list[str]:
    """Those of ``names`` the marketplace knows: members of a unit, or forum authors."""
    if not names:
        return []
    known = set(session.scalars(select(Member.user_name).where(Member.user_name.in_(names))))
    known |= set(session.scalars(select(ForumPost.author).where(ForumPost.author.in_(names))))
    return [n for n in names if n in known]


def _require_poster(caller: Caller) -> None:
    if SCOPE_SUBSCRIBE not in caller.scopes and not caller.is_operator:
        raise Forbidden(f"posting in the forum needs the subscriber role; {caller.name} "
                        "lacks it")


def _text(body: dict, name: str, low: int, high: int) -> str:
    """A text field: at most ``high`` characters as sent, at least ``low`` once stripped."""
    value = body.get(name)
    if not isinstance(value, str) or len(value) > high or len(value.strip()) < low:
        raise InvalidField(f"{name} is required: text of {low} to {high} characters", name)
    return value.strip()


# --- what a thread is attached to ------------------------------------------------------------


def _topic_exists(session: Session, ident: int) -> bool:
    """Whether topic request ``ident`` exists (the topics concern decides)."""
    from . import topics  # imported here: the topics concern may import the forum's neighbours

    try:
        topics.get_topic(session, ident)
    except NotFound:
        return False
    return True


def parse_target(values: dict) -> tuple[str, str]:
    """The one of ``product``, ``topic`` or ``category`` a body or query names, as
    ``(kind, ref)``; 400 naming the field if none or several are given."""
    given = [k for k in TARGET_KINDS if values.get(k) not in (None, "")]
    if len(given) != 1:
        raise InvalidField("name exactly one of product, topic or category for the thread",
                           "category" if not given else given[1])
    kind = given[0]
    raw = values[kind]
    if kind == "topic" and isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or len(raw) > 128:
        raise InvalidField(f"{kind} must be a name of at most 128 characters", kind)
    return kind, raw


def check_target(session: Session, caller: Caller, kind: str, ref: str) -> str:
    """``ref`` checked for the caller: a product they can see, an existing topic, a known
    category (404 naming the field otherwise); returns it normalised."""
    if kind == "category":
        if ref not in CATEGORIES:
            raise NotFound(f"no forum category {ref!r}; the categories are "
                           f"{', '.join(CATEGORIES)}", "category")
        return ref
    if kind == "product":
        return catalog.get_product(session, ref, caller).name
    ident = parse_id(ref, "topic", "topic")
    if not _topic_exists(session, ident):
        raise NotFound(f"no topic {ref!r}", "topic")
    return str(ident)


def target_link(kind: str, ref: str) -> str:
    """The page a thread's target lives on (relative to the marketplace)."""
    if kind == "product":
        return f"products/{ref}"
    if kind == "topic":
        return f"topics/{ref}"
    return f"forum?category={ref}"


def target_label(kind: str, ref: str) -> str:
    if kind == "category":
        return CATEGORIES.get(ref, ref)
    return f"{kind.capitalize()} {ref}" if kind == "topic" else ref


# --- writing ---------------------------------------------------------------------------------


def _new_post(session: Session, caller: Caller, thread: ForumThread, text: str,
              now: datetime) -> ForumPost:
    names = [n for n in mentioned_names(text) if n != caller.name][:MAX_MENTIONS]
    notified = _known_users(session, names)
    post = ForumPost(thread_id=thread.id, author=caller.name, author_unit=caller.unit,
                     body=text, html=render(text), mentions=json.dumps(notified),
                     created_at=now)
    session.add(post)
    thread.post_count += 1
    thread.last_post_at = now
    session.flush()
    if notified:
        inbox.notify(session, notified, "mention",
                     f"{caller.name} mentioned you in “{thread.title}”",
                     f"forum/{thread.id}#post-{post.id}",
                     body=text[:500], ref=f"forum_post:{post.id}")
    return post


def create_thread(session: Session, caller: Caller, body: dict,
                  now: datetime | None = None) -> ForumThread:
    """A new thread with its opening post: ``{"title", "body", and one of "product",
    "topic", "category"}``. The caller commits."""
    _require_poster(caller)
    unknown = set(body) - {"title", "body", *TARGET_KINDS}
    if unknown:
        raise InvalidField(f"unknown field {sorted(unknown)[0]!r}", sorted(unknown)[0])
    kind, ref = parse_target(body)
    title = _one_line(_text(body, "title", MIN_TITLE, MAX_TITLE))
    text = _text(body, "body", 1, MAX_BODY)
    ref = check_target(session, caller, kind, ref)
    now = now or utcnow()
    thread = ForumThread(target_kind=kind, target=ref, title=title, author=caller.name,
                         author_unit=caller.unit, created_at=now, last_post_at=now,
                         post_count=0)
    session.add(thread)
    session.flush()
    _new_post(session, caller, thread, text, now)
    return thread


def _one_line(text: str) -> str:
    return " ".join(text.split())


def add_post(session: Session, caller: Caller, thread: ForumThread, body: dict,
             now: datetime | None = None) -> ForumPost:
    """A reply ``{"body"}``; a hidden thread takes none (409). The caller commits."""
    _require_poster(caller)
    unknown = set(body) - {"body"}
    if unknown:
        raise InvalidField(f"unknown field {sorted(unknown)[0]!r}", sorted(unknown)[0])
    text = _text(body, "body", 1, MAX_BODY)
    if thread.hidden:
        raise Conflict("this thread was hidden by an operator and takes no replies", "thread")
    return _new_post(session, caller, thread, text, now or utcnow())


def parse_moderation(body: dict) -> tuple[bool, str | None]:
    """``{"hidden": true, "reason": "..."}`` (a reason is required to hide) or
    ``{"hidden": false}``."""
    unknown = set(body) - {"hidden", "reason"}
    if unknown:
        raise InvalidField(f"unknown field {sorted(unknown)[0]!r}", sorted(unknown)[0])
    hidden = body.get("hidden")
    if not isinstance(hidden, bool):
        raise InvalidField("hidden must be true or false", "hidden")
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
        raise InvalidField(f"reason must be text of at most {MAX_REASON} characters", "reason")
    if hidden:
        reason = _text(body, "reason", 3, MAX_REASON)
    return hidden, (reason.strip() or None) if reason else None


def moderate(session: Session, caller: Caller, target: ForumThread | ForumPost, hidden: bool,
             reason: str | None, now: datetime | None = None) -> ForumThread | ForumPost:
    """An operator hides ``target`` (with a reason everyone sees) or shows it again."""
    if not caller.is_operator:
        raise Forbidden("only operators moderate the forum")
    target.hidden = hidden
    if hidden:
        target.hidden_reason, target.hidden_by, target.hidden_at = reason, caller.name, \
            now or utcnow()
    else:
        target.hidden_reason = target.hidden_by = target.hidden_at = None
    session.flush()
    return target


# --- reading ---------------------------------------------------------------------------------


def get_thread(session: Session, caller: Caller, ident: object) -> ForumThread:
    """A thread the caller may see (a product thread follows its product's visibility)."""
    thread = session.get(ForumThread, parse_id(ident, "thread", "thread"))
    if thread is None:
        raise NotFound(f"no thread {ident!r}", "thread")
    if thread.target_kind == "product":
        try:
            catalog.get_product(session, thread.target, caller)
        except NotFound:
            raise NotFound(f"no thread {ident!r}", "thread") from None
    return thread


def get_post(session: Session, caller: Caller, ident: object) -> ForumPost:
    post = session.get(ForumPost, parse_id(ident, "post", "post"))
    if post is None:
        raise NotFound(f"no post {ident!r}", "post")
    get_thread(session, caller, post.thread_id)
    return post


def _visible_products(session: Session, caller: Caller) -> list[str]:
    products, _ = catalog.list_products(session, caller, limit=10_000, sort="name")
    return [p.name for p in products]


def parse_query(q: object) -> str | None:
    if q is None or q == "":
        return None
    if not isinstance(q, str) or len(q) > MAX_QUERY or len(q.strip()) < 2:
        raise InvalidField(f"q must be 2 to {MAX_QUERY} characters", "q")
    return q.strip()


def list_threads(session: Session, caller: Caller, target: tuple[str, str] | None = None,
                 q: str | None = None, page: int = 1, per_page: int = 20
                 ) -> tuple[list[ForumThread], int]:
    """Threads, latest activity first: all, or those of one target; ``q`` matches titles and
    the text of posts (case-insensitive). Hidden threads and posts count for operators only.
    Returns one page and the total."""
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise InvalidField(f"per_page must be between 1 and {MAX_PER_PAGE}", "per_page")
    if page < 1:
        raise InvalidField("page must be 1 or more", "page")
    where = []
    if target is not None:
        where += [ForumThread.target_kind == target[0], ForumThread.target == target[1]]
    if not caller.is_operator:
        where.append(ForumThread.hidden.is_(False))
        where.append(or_(ForumThread.target_kind != "product",
                         ForumThread.target.in_(_visible_products(session, caller))))
    if q:
        needle = q.lower()
        posts = select(ForumPost.thread_id).where(
            func.lower(ForumPost.body).contains(needle, autoescape=True))
        if not caller.is_operator:
            posts = posts.where(ForumPost.hidden.is_(False))
        where.append(or_(func.lower(ForumThread.title).contains(needle, autoescape=True),
                         ForumThread.id.in_(posts)))
    total = session.scalar(select(func.count()).select_from(ForumThread).where(*where)) or 0
    rows = session.scalars(select(ForumThread).where(*where)
                           .order_by(ForumThread.last_post_at.desc(), ForumThread.id.desc())
                           .offset((page - 1) * per_page).limit(per_page))
    return list(rows), total


def list_posts(session: Session, thread: ForumThread, page: int = 1, per_page: int = 20
               ) -> tuple[list[ForumPost], int]:
    """One page of a thread's posts, oldest first, and how many it has."""
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise InvalidField(f"per_page must be between 1 and {MAX_PER_PAGE}", "per_page")
    if page < 1:
        raise InvalidField("page must be 1 or more", "page")
    total = session.scalar(select(func.count()).select_from(ForumPost)
                           .where(ForumPost.thread_id == thread.id)) or 0
    rows = session.scalars(select(ForumPost).where(ForumPost.thread_id == thread.id)
                           .order_by(ForumPost.id).offset((page - 1) * per_page).limit(per_page))
    return list(rows), total


def page_of_post(session: Session, post: ForumPost, per_page: int = 20) -> int:
    before = session.scalar(select(func.count()).select_from(ForumPost).where(
        ForumPost.thread_id == post.thread_id, ForumPost.id < post.id)) or 0
    return before // per_page + 1


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() + "Z" if t else None


def _moderation(obj: ForumThread | ForumPost, caller: Caller) -> dict:
    data = {"hidden": obj.hidden, "hidden_reason": obj.hidden_reason if obj.hidden else None}
    if caller.is_operator:
        data["hidden_by"] = obj.hidden_by
        data["hidden_at"] = _iso(obj.hidden_at)
    return data


def thread_json(thread: ForumThread, caller: Caller) -> dict:
    shown = not thread.hidden or caller.is_operator
    return {
        "id": thread.id,
        "title": thread.title if shown else "(hidden by an operator)",
        "target": {"kind": thread.target_kind, "ref": thread.target,
                   "label": target_label(thread.target_kind, thread.target),
                   "link": target_link(thread.target_kind, thread.target)},
        "author": thread.author, "author_unit": thread.author_unit,
        "created_at": _iso(thread.created_at), "last_post_at": _iso(thread.last_post_at),
        "post_count": thread.post_count,
        **_moderation(thread, caller),
    }


def post_json(post: ForumPost, caller: Caller) -> dict:
    shown = not post.hidden or caller.is_operator
    return {
        "id": post.id, "thread": post.thread_id, "author": post.author,
        "author_unit": post.author_unit, "created_at": _iso(post.created_at),
        "body": post.body if shown else "", "html": post.html if shown else "",
        "mentions": json.loads(post.mentions) if shown else [],
        **_moderation(post, caller),
    }


def thread_page(session: Session, caller: Caller, thread: ForumThread, page: int = 1,
                per_page: int = 20) -> dict:
    """A thread and one page of its posts as the API and the page show them; the posts of a
    hidden thread are for operators only."""
    if thread.hidden and not caller.is_operator:
        posts, total = [], 0
    else:
        posts, total = list_posts(session, thread, page, per_page)
    return {"thread": thread_json(thread, caller),
            "posts": [post_json(p, caller) for p in posts],
            "total": total, "page": page, "per_page": per_page}


def threads_listing(session: Session, caller: Caller, target: tuple[str, str] | None,
                    q: str | None, page: int, per_page: int) -> dict:
    """One read for a thread list: ``target`` (``(kind, ref)`` as parsed) checked for the
    caller, then one page of threads as JSON and the total; ``target`` comes back normalised
    (None for every thread)."""
    if target is not None:
        target = (target[0], check_target(session, caller, *target))
    threads, total = list_threads(session, caller, target, q, page, per_page)
    return {"threads": [thread_json(t, caller) for t in threads], "total": total,
            "target": target}


def thread_reading(session: Session, caller: Caller, ident: object, page: int = 1,
                   per_page: int = 20) -> dict:
    """:func:`thread_page` of the thread ``ident`` the caller may see (404 otherwise)."""
    return thread_page(session, caller, get_thread(session, caller, ident), page, per_page)
