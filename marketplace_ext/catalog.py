"""The catalogue: products, immutable versions, the shelf state machine, listing and search.

Shelf states of a version::

    draft -> submitted -> on_shelf | rejected(reason)
    on_shelf <-> off_shelf
    on_shelf | off_shelf -> superseded   (a newer version of the product was approved)

A product's *current* version is the one on sale; a new version goes through review while the
current one stays on sale, and approving it makes it current. Every transition is recorded with
who, when and why.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import quote, unquote

import mistune
import nh3
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from . import certlog, ledger_views
from .auth import SCOPE_PUBLISH, Caller
from .errors import Conflict, Forbidden, InvalidField, NotFound
from .orm import Agreement, Product, Tag, Transition, Unit, Version
from .signing import UnitSigner
from .units import get_unit

DRAFT, SUBMITTED, ON_SHELF, REJECTED, OFF_SHELF, SUPERSEDED = (
    "draft", "submitted", "on_shelf", "rejected", "off_shelf", "superseded",
)
KINDS = ("data", "tool", "application")
#: shelf orders: the published ranking (exchange/ranking.py), by name, newest product first,
#: most units using it first
SORTS = ("rank", "name", "new", "used")
TRANSITIONS = {
    None: {DRAFT},
    DRAFT: {SUBMITTED},
    SUBMITTED: {ON_SHELF, REJECTED},
    ON_SHELF: {OFF_SHELF, SUPERSEDED},
    OFF_SHELF: {ON_SHELF, SUPERSEDED},
    REJECTED: set(),
    SUPERSEDED: set(),
}

DEFAULT_TERMS = """\
Sharing agreement of the Grid Data Supermarket.
The publishing unit confirms that it owns this product or may share it, that the product
contains no customer data except through the desensitized views it declares, that subscribers
may use it within the sharing modes its manifest lists for the plans they buy, and that the
marketplace may run, store and certify it for that purpose."""


@dataclass(frozen=True)
class Submission:
    """What the bundle layer hands the catalogue: a validated bundle and its canonical archive."""

    manifest: dict
    parameters: dict
    readme: str
    files: list[str]
    sha256: str
    size: int
    file_digests: dict[str, str]


def _move(version: Version, to_state: str, caller: Caller, reason: str | None = None,
          session: Session | None = None) -> None:
    """Move ``version`` to ``to_state``; with a session, certify the step in the log (the
    first two steps are certified together, as the submission)."""
    if to_state not in TRANSITIONS[version.state if version.state else None]:
        raise Conflict(
            f"version {version.version} is {version.state}; it cannot become {to_state}",
            "state",
        )
    version.transitions.append(
        Transition(from_state=version.state, to_state=to_state, actor=caller.name,
                   actor_is_operator=caller.is_operator, reason=reason)
    )
    if session is not None:
        certlog.append(session, "shelf", caller.name, caller.unit, version.sha256,
                       product=version.product.name, version=version.version,
                       from_state=version.state, to_state=to_state, reason=reason)
    version.state = to_state
    if to_state == REJECTED:
        version.reason = reason


def _caller_unit(session: Session, caller: Caller) -> Unit:
    if caller.unit is None:
        raise Forbidden(f"{caller.name} is not a member of any unit; ask an operator", "unit")
    return get_unit(session, caller.unit)


def submit_version(
    session: Session, signer: UnitSigner, caller: Caller, sub: Submission, terms: str
) -> tuple[Version, bool]:
    """Record a submitted version (and the product on first submission); returns the version and
    whether it is new. The same bundle again returns the existing version unchanged."""
    caller.require(SCOPE_PUBLISH, "publishing a product")
    unit = _caller_unit(session, caller)
    m = sub.manifest
    product = session.scalar(select(Product).where(Product.name == m["name"]))
    if product is None:
        product = Product(name=m["name"], kind=m["kind"], unit=unit, created_by=caller.name)
        session.add(product)
    else:
        if product.unit_id != unit.id:
            raise Forbidden(
                f"product {product.name!r} belongs to unit {product.unit.slug!r}; only its "
                "publishers may submit versions", "name",
            )
        if product.kind != m["kind"]:
            raise InvalidField(
                f"product {product.name!r} is a {product.kind} product, not {m['kind']}", "kind"
            )
        for existing in product.versions:
            if existing.sha256 == sub.sha256:
                return existing, False
            if existing.version == m["version"]:
                raise Conflict(
                    f"version {m['version']} of {product.name!r} exists with different "
                    "content; bump the version", "version",
                )
    version = Version(
        product=product, version=m["version"], sha256=sub.sha256, state=None,
        title=m["title"], summary=m["summary"], tags=json.dumps(m.get("tags", [])),
        manifest=json.dumps(m, sort_keys=True), parameters=json.dumps(sub.parameters),
        files=json.dumps(sub.files), readme=sub.readme, size=sub.size, created_by=caller.name,
        file_digests=json.dumps(sub.file_digests, sort_keys=True),
    )
    session.add(version)
    version.transitions = []
    _move(version, DRAFT, caller)
    _move(version, SUBMITTED, caller)
    try:
        session.flush()
    except IntegrityError as e:  # a concurrent upload of the same name/version won the race
        raise Conflict(f"version {m['version']} of {m['name']!r} was just submitted", "version") \
            from e
    for tag in sorted({t.lower() for t in m.get("tags", [])}):
        session.add(Tag(version_id=version.id, tag=tag))
    statement = {
        "type": "sharing_agreement", "product": product.name, "version": version.version,
        "bundle_sha256": sub.sha256, "unit": unit.slug, "signer": caller.name,
        "terms_sha256": _sha256_text(terms), "signed_at": version.created_at.isoformat() + "Z",
    }
    text, signature, public_key = signer.sign(session, unit, statement)
    session.add(Agreement(version=version, unit_id=unit.id, signer=caller.name, terms=terms,
                          statement=text, signature=signature, public_key=public_key))
    version.log_index = certlog.append(
        session, "version_submitted", caller.name, unit.slug, sub.sha256,
        product=product.name, kind=product.kind, version=version.version,
        files=sub.file_digests,
        agreement={"statement": text, "signature": signature, "public_key": public_key},
    )
    session.flush()
    return version, True


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _can_see_all(product: Product, caller: Caller) -> bool:
    return caller.is_operator or (caller.unit is not None and product.unit.slug == caller.unit)


def get_product(session: Session, name: str, caller: Caller) -> Product:
    """The product if the caller may see it; a product not on the shelf is invisible (404) to
    other units, so its existence does not leak."""
    product = session.scalar(select(Product).where(Product.name == name))
    if product is None or not (_can_see_all(product, caller) or _on_shelf(product)):
        raise NotFound(f"no product {name!r}", "product")
    return product


def _on_shelf(product: Product) -> bool:
    return product.current_version is not None and product.current_version.state == ON_SHELF


def usable_version(product: Product, caller: Caller, requested: object = None) -> Version:
    """The version a caller may run, call or send code to: only reviewed code runs on other
    people's data, so that is the product's current on-shelf version. A version that is not on
    the shelf (submitted, rejected, off the shelf, an older one) runs only as a preview, for
    publishers of the owning unit (and operators, who review it). Everyone else gets 403."""
    if requested is None:
        version = product.current_version
        if version is None:
            raise NotFound(f"{product.name!r} has no version on sale", "version")
    else:
        version = get_version(product, str(requested))
    if version is product.current_version and version.state == ON_SHELF:
        return version
    preview = caller.is_operator or (caller.unit == product.unit.slug
                                     and SCOPE_PUBLISH in caller.scopes)
    if not preview:
        raise Forbidden(f"version {version.version} of {product.name!r} is {version.state}, "
                        "not the reviewed version on the shelf: only publishers of unit "
                        f"{product.unit.slug!r} may preview it", "version")
    return version


def get_version(product: Product, version: str) -> Version:
    for v in product.versions:
        if v.version == version:
            return v
    raise NotFound(f"product {product.name!r} has no version {version!r}", "version")


def review(session: Session, caller: Caller, product: Product, version: Version,
           decision: object, reason: object) -> Version:
    """An operator approves (puts on the shelf, makes current) or rejects a submitted version."""
    if decision not in ("approve", "reject"):
        raise InvalidField("decision must be 'approve' or 'reject'", "decision")
    if reason is not None and not isinstance(reason, str):
        raise InvalidField("reason must be a string", "reason")
    if version.state != SUBMITTED:
        raise Conflict(f"version {version.version} is {version.state}, not submitted", "version")
    if decision == "reject":
        if not reason or not reason.strip():
            raise InvalidField("a rejection needs a reason the publisher can act on", "reason")
        _move(version, REJECTED, caller, reason.strip(), session)
    else:
        previous = product.current_version
        _move(version, ON_SHELF, caller, reason, session)
        if previous is not None and previous is not version:
            _move(previous, SUPERSEDED, caller, f"replaced by {version.version}", session)
        product.current_version = version
    session.flush()
    return version


def set_shelf(session: Session, caller: Caller, product: Product, state: object,
              reason: object) -> Version:
    """Take the current version off the shelf or put it back.

    The owning unit's publishers and operators may take it off; putting it back is for
    operators, or for the owner if the owner took it off (an operator's removal stands).
    """
    if state not in ("on", "off"):
        raise InvalidField("state must be 'on' or 'off'", "state")
    if reason is not None and not isinstance(reason, str):
        raise InvalidField("reason must be a string", "reason")
    owner = caller.unit == product.unit.slug and SCOPE_PUBLISH in caller.scopes
    if not (owner or caller.is_operator):
        raise Forbidden("only the owning unit's publishers and operators change the shelf",
                        "product")
    current = product.current_version
    if current is None:
        raise Conflict(f"product {product.name!r} has no approved version yet", "state")
    if state == "off":
        _move(current, OFF_SHELF, caller, reason, session)
    else:
        last_off = next((t for t in reversed(current.transitions) if t.to_state == OFF_SHELF),
                        None)
        if last_off is not None and last_off.actor_is_operator and not caller.is_operator:
            raise Forbidden("an operator took this product off the shelf; only an operator "
                            "can put it back", "state")
        _move(current, ON_SHELF, caller, reason, session)
    session.flush()
    return current


def list_products(session: Session, caller: Caller, *, kind: str | None = None,
                  tag: str | None = None, unit: str | None = None, q: str | None = None,
                  limit: int = 50, offset: int = 0,
                  sort: str = "name") -> tuple[list[Product], int]:
    """The shelf: on-shelf products for everyone, plus all of the caller's unit's products;
    operators see everything. ``sort`` is one of :data:`SORTS`."""
    if sort not in SORTS:
        raise InvalidField(f"sort must be one of {', '.join(SORTS)}", "sort")
    current = aliased(Version)
    query = select(Product).join(Unit, Product.unit_id == Unit.id).outerjoin(
        current, Product.current_version_id == current.id
    )
    if not caller.is_operator:
        visible = current.state == ON_SHELF
        if caller.unit is not None:
            visible = or_(visible, Unit.slug == caller.unit)
        query = query.where(visible)
    if kind:
        query = query.where(Product.kind == kind)
    if unit:
        query = query.where(Unit.slug == unit)
    if tag:
        tagged = select(Tag.version_id).join(Version, Tag.version_id == Version.id).where(
            Tag.tag == tag.lower(), Version.product_id == Product.id
        )
        query = query.where(tagged.exists())
    if q:
        like = f"%{q.lower()}%"
        latest = select(Version.product_id).where(
            Version.product_id == Product.id,
            or_(func.lower(Version.title).like(like), func.lower(Version.summary).like(like)),
        )
        query = query.where(or_(func.lower(Product.name).like(like), latest.exists()))
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    if sort == "rank":  # the published formula, computed over every match, then paged
        from .exchange import ranking  # (ranking lists products through this module)

        ranked = ranking.rank(session, list(session.scalars(query).all()))
        return ranked[offset:offset + limit], total
    order = {"name": (Product.name,),
             "new": (Product.created_at.desc(), Product.id.desc()),
             "used": (ledger_views.buyers_count_expr().desc(), Product.name)}[sort]
    items = session.scalars(query.order_by(*order).limit(limit).offset(offset)).all()
    return list(items), total


def shelf_facets(session: Session, caller: Caller) -> dict:
    """The tags and units of the products the caller sees, for the shelf's filters."""
    products, _ = list_products(session, caller, limit=1000)
    tags = sorted({t.lower() for p in products for t in product_summary(p, caller)["tags"]})
    return {"tags": tags, "units": sorted({p.unit.slug for p in products})}


def version_files(version: Version | None) -> list[dict]:
    """The files of a version with their certified sha256, by path."""
    if version is None:
        return []
    return [{"path": path, "sha256": digest}
            for path, digest in sorted(json.loads(version.file_digests).items())]


#: the images a product card may show, by extension: raster only (an SVG can carry script)
CARD_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def card_image_path(src: str) -> str | None:
    """The bundle file a card's image ``src`` names (``card/output.png``, ``./files/a.jpg``),
    or None for anything else: a URL with a scheme or a host, an absolute path, ``..``, a
    query or fragment, control characters, or a file that is not a PNG or JPEG by its name.
    Percent-encoding is decoded first, so an encoded ``..`` or ``/`` is refused as well."""
    value = unquote(src or "")
    if (not value or value != value.strip() or "\\" in value or "?" in value or "#" in value
            or value.startswith("/") or _SCHEME.match(src or "") or _SCHEME.match(value)
            or any(ord(c) < 32 or ord(c) == 127 for c in value)):
        return None
    parts = value.split("/")
    if parts[0] == ".":
        parts = parts[1:]
    if not parts or any(part in ("", ".", "..") for part in parts):
        return None
    path = "/".join(parts)
    return path if PurePosixPath(path).suffix.lower() in CARD_IMAGE_TYPES else None


def card_image_base(service_prefix: str, product: str, version: str) -> str:
    """Where the service serves the card images of one version (handlers/card_pages.py)."""
    return (f"{service_prefix}products/{quote(product, safe='')}/versions/"
            f"{quote(version, safe='')}/card/")


def render_readme(markdown: str, image_base: str | None = None) -> str:
    """The product card as HTML, sanitized by nh3 (untrusted publisher input).

    An image whose ``src`` names a PNG or JPEG of the bundle (:func:`card_image_path`) is
    pointed at ``image_base`` + that path, the version's card-image route; every other image
    source (external, absolute, ``..``, ``data:``, SVG) is dropped, as are all of them without
    an ``image_base`` (forum posts, reviews): a card never makes the browser fetch anything
    but the service's own card images."""
    def keep(tag: str, attribute: str, value: str) -> str | None:
        if tag == "img" and attribute == "src":
            path = card_image_path(value)
            return None if path is None or image_base is None else image_base + quote(path)
        return value

    return nh3.clean(mistune.html(markdown), attribute_filter=keep)


def card_image_paths(markdown: str) -> set[str]:
    """The bundle files a card's README shows as images (those :func:`render_readme` keeps)."""
    found: set[str] = set()

    def collect(tag: str, attribute: str, value: str) -> str:
        if tag == "img" and attribute == "src" and (path := card_image_path(value)):
            found.add(path)
        return value

    nh3.clean(mistune.html(markdown), attribute_filter=collect)
    return found


def version_json(v: Version, full: bool = False) -> dict:
    data = {
        "version": v.version, "sha256": v.sha256, "state": v.state, "reason": v.reason,
        "log_index": v.log_index,
        "created_at": v.created_at.isoformat() + "Z", "created_by": v.created_by,
    }
    if full:
        data["transitions"] = [
            {"from": t.from_state, "to": t.to_state, "actor": t.actor, "reason": t.reason,
             "at": t.at.isoformat() + "Z"}
            for t in v.transitions
        ]
        data["files"] = json.loads(v.files)
        data["size"] = v.size
    return data


def product_summary(p: Product, caller: Caller) -> dict:
    shown = p.current_version or (p.versions[-1] if _can_see_all(p, caller) else None)
    manifest = json.loads(shown.manifest) if shown else {}
    return {
        "name": p.name, "kind": p.kind, "unit": p.unit.slug,
        "title": shown.title if shown else p.name,
        "summary": shown.summary if shown else "",
        "tags": json.loads(shown.tags) if shown else [],
        "current_version": p.current_version.version if p.current_version else None,
        "state": p.current_version.state if p.current_version else "unreleased",
        "plans": manifest.get("plans", []),
    }


def visible_versions(p: Product, caller: Caller) -> list[Version]:
    """The versions the product page shows ``caller``: all of them to the owning unit and
    operators, the one on sale to everyone else."""
    see_all = _can_see_all(p, caller)
    return [v for v in p.versions if see_all or v is p.current_version]


def product_detail(p: Product, caller: Caller, service_prefix: str | None = None) -> dict:
    """The product page's data; with ``service_prefix``, the card's images point at the
    service's card-image route (without it, the card shows none)."""
    data = product_summary(p, caller)
    see_all = _can_see_all(p, caller)
    versions = visible_versions(p, caller)
    card = p.current_version or (versions[-1] if versions else None)
    manifest = json.loads(card.manifest) if card else {}
    data.update({
        "card_html": render_readme(card.readme, None if service_prefix is None else
                                   card_image_base(service_prefix, p.name, card.version))
        if card else "",
        "manifest": manifest,
        "parameters": json.loads(card.parameters) if card else {},
        "versions": [version_json(v, full=see_all) for v in versions],
        "certification": [
            {"version": v.version, "statement": v.agreement.statement,
             "signature": v.agreement.signature, "public_key": v.agreement.public_key,
             "terms": v.agreement.terms}
            for v in versions if v.agreement is not None
        ],
    })
    return data

