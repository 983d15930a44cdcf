"""The sharing gate: the one way any unit uses a product, in every sharing mode.

Download, view export, interface queries, remote runs, remote calls and model-to-data each
go through the same two steps, so they answer the same status codes for the same reasons:

1. :func:`authorize_use`, in a short read: the subscribe scope (403), a product the caller may
   see (404), of a kind the mode serves (400 ``product``), the reviewed version on the shelf
   unless the caller previews its own unit's code (404 to other units, 403 to the owning
   unit's subscribers), membership of a unit (403 ``unit``), a mode the product offers (403
   ``mode``) and an active entitlement (403 ``no_entitlement``). It returns a :class:`Grant`.
2. :func:`record_use`, in the write that delivers: one use is consumed atomically
   (``UPDATE … WHERE uses_left > 0``, so two concurrent uses of a single per-use order cannot
   both succeed) and the use is certified in the log.

Blocking work (Spark, papermill, a warm kernel) runs between the two, outside any transaction;
a per-use order is spent only when something was delivered.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from . import catalog, certlog, points
from .auth import SCOPE_SUBSCRIBE, Caller
from .errors import Forbidden, InvalidField, NotFound
from .orm import Entitlement
from .units import get_unit

# sharing mode -> the product kinds it serves, and what the caller is doing (for messages)
MODES: dict[str, tuple[tuple[str, ...], str]] = {
    "download": (("data", "tool", "application"), "downloading a product"),
    "interface": (("data",), "querying a data product"),
    "remote_run": (("tool", "application"), "running a product"),
    "remote_call": (("tool",), "calling a tool product"),
    "model_to_data": (("data",), "sending a notebook to a data product"),
}
_KIND_WORDS = {
    "download": "every kind downloads",
    "interface": "only data products answer queries",
    "remote_run": "only applications and tools run",
    "remote_call": "only tools answer remote calls",
    "model_to_data": "model-to-data runs on data products",
}


@dataclass(frozen=True)
class Grant:
    """What :func:`authorize_use` allowed: plain values, safe to carry across an executor."""

    mode: str
    product: str
    product_id: int
    owner_unit: str  # the publisher's unit
    owner_unit_id: int
    version: str
    version_id: int
    bundle_sha256: str
    unit: str | None  # the caller's unit; None only for an operator's inspection
    unit_id: int | None
    entitlement_id: int | None  # None: the owning unit's own use, or an inspection

    @property
    def own_product(self) -> bool:
        return self.unit is not None and self.unit == self.owner_unit

    @property
    def inspection(self) -> bool:
        """An operator (in no unit) reading what they certify: nothing is charged."""
        return self.unit is None


def authorize_use(session: Session, caller: Caller, product_name: object, mode: str, *,
                  version: object = None, inspection: bool = False,
                  kinds: tuple[str, ...] | None = None, kind_rule: str | None = None) -> Grant:
    """Check that ``caller`` may use ``product_name`` in ``mode``; raises the gate's errors.

    ``version`` asks for a version other than the one on the shelf (a preview: publishers of
    the owning unit and operators only). ``inspection`` lets an operator who belongs to no
    unit use the product without an entitlement (downloads: operators read what they review
    and certify). ``kinds`` narrows the product kinds the mode serves (``kind_rule`` says
    which, in the 400's message): a view export is a download of data products only."""
    mode_kinds, action = MODES[mode]
    kinds = kinds or mode_kinds
    kind_rule = kind_rule or _KIND_WORDS[mode]
    caller.require(SCOPE_SUBSCRIBE, action)
    if not isinstance(product_name, str) or not product_name:
        raise InvalidField("product is required: the product's name", "product")
    product = catalog.get_product(session, product_name, caller)
    if product.kind not in kinds:
        raise InvalidField(f"{product_name!r} is a {product.kind} product; "
                           f"{kind_rule}", "product")
    owner_unit = product.unit.slug
    try:
        used = catalog.usable_version(product, caller, version)
    except Forbidden:
        if caller.unit != owner_unit and not caller.is_operator:
            # another unit does not learn that an unreviewed version exists
            raise NotFound(f"version {version} of {product_name!r} is not on sale",
                           "version") from None
        raise
    fields = dict(mode=mode, product=product.name, product_id=product.id,
                  owner_unit=owner_unit, owner_unit_id=product.unit_id, version=used.version,
                  version_id=used.id, bundle_sha256=used.sha256)
    if caller.unit is None:
        if inspection and caller.is_operator:
            if mode not in points.offered_modes(product):
                raise Forbidden(f"{product.name!r} is not shared by {mode}", "mode")
            return Grant(**fields, unit=None, unit_id=None, entitlement_id=None)
        raise Forbidden(f"{caller.name} is not a member of any unit; ask an operator", "unit")
    unit = get_unit(session, caller.unit)
    entitlement = points.check(session, unit, product, mode)
    return Grant(**fields, unit=unit.slug, unit_id=unit.id,
                 entitlement_id=entitlement.id if entitlement else None)


def consume_use(session: Session, grant: Grant) -> int | None:
    """Spend one use of the grant's entitlement (periods and owners spend nothing); returns
    the order it came from, if any. Raises ``no_entitlement`` if a concurrent use took the
    last one meanwhile."""
    if grant.entitlement_id is None:
        return None
    entitlement = session.get(Entitlement, grant.entitlement_id)
    if entitlement is None:
        raise points.NoEntitlement("the entitlement behind this use is gone", "product")
    points.consume(session, entitlement)
    return entitlement.order_id


def record_use(session: Session, caller: Caller, grant: Grant, entry_type: str, digest: str,
               **details) -> int:
    """Consume one use and certify it as ``entry_type`` with ``digest`` (what was delivered)
    and ``details``; returns the log index. Call it in the transaction that delivers."""
    order = consume_use(session, grant)
    return certlog.append(session, entry_type, caller.name, caller.unit, digest,
                          product=grant.product, version=grant.version, order=order, **details)
