"""The download sharing mode: a file of a product version, or a data product's desensitized view
exported to CSV/Parquet, behind the entitlement gate and certified in the log with its sha256,
so the receiver can verify it offline later."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass

from sqlalchemy.orm import Session

from . import catalog, certlog, points
from .auth import SCOPE_SUBSCRIBE, Caller
from .blobs import BlobStore
from .errors import Forbidden, InvalidField, NotFound
from .orm import Entitlement
from .units import get_unit

EXPORT_FORMATS = ("csv", "parquet")


@dataclass(frozen=True)
class Delivery:
    data: bytes
    sha256: str
    log_index: int
    filename: str


def deliver_file(session: Session, blobs: BlobStore, caller: Caller, product_name: str,
                 version: str, path: str) -> Delivery:
    """Check the caller may download, consume a per-use order, certify, return the bytes.

    Other units get the version on sale; the owner and operators any version.
    """
    caller.require(SCOPE_SUBSCRIBE, "downloading a product")
    product = catalog.get_product(session, product_name, caller)
    v = catalog.get_version(product, version)
    owner = caller.unit is not None and product.unit.slug == caller.unit
    if not (owner or caller.is_operator) and v is not product.current_version:
        raise NotFound(f"version {version} of {product_name!r} is not on sale", "version")
    digests = json.loads(v.file_digests)
    if path not in digests:
        raise NotFound(f"version {version} of {product_name!r} has no file {path!r}", "path")
    if caller.is_operator and not owner:
        entitlement = None  # operators inspect what they certify
    elif caller.unit is None:
        raise Forbidden(f"{caller.name} is not a member of any unit", "unit")
    else:
        entitlement = points.check(session, get_unit(session, caller.unit), product, "download")
    with zipfile.ZipFile(io.BytesIO(blobs.get(v.sha256))) as archive:
        data = archive.read(path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != digests[path]:  # the stored archive no longer matches what was certified
        raise NotFound(f"{path} of {product_name} {version} failed its integrity check", "path")
    points.consume(session, entitlement)
    index = certlog.append(
        session, "download", caller.name, caller.unit, digest, product=product.name,
        version=v.version, path=path, bundle_sha256=v.sha256,
        order=entitlement.order_id if entitlement else None,
    )
    return Delivery(data=data, sha256=digest, log_index=index,
                    filename=path.rsplit("/", 1)[-1])


@dataclass(frozen=True)
class ExportPlan:
    """An authorized export of a data product's view, to run outside any transaction."""

    product: str
    version: str
    platform_unit: str  # the publisher's unit: its platform holds the view
    view: str  # qualified: unit_x.name
    format: str
    entitlement_id: int | None


def plan_export(session: Session, platform, caller: Caller, product_name: str, view: str,
                fmt: str) -> ExportPlan:
    """Check the caller may download ``view`` of a data product (its desensitized view, never
    a source table) in ``fmt``."""
    caller.require(SCOPE_SUBSCRIBE, "downloading a product")
    product = catalog.get_product(session, product_name, caller)
    if product.kind != "data":
        raise InvalidField(f"{product_name!r} is a {product.kind} product; only data products "
                           "export views", "product")
    if fmt not in EXPORT_FORMATS:
        raise InvalidField(f"format must be one of {', '.join(EXPORT_FORMATS)}", "format")
    manifest = json.loads(product.current_version.manifest)
    views = [v["view"] for v in manifest.get("views", [])]
    if view not in views:
        raise NotFound(f"{product_name!r} publishes no view {view!r}; its views: "
                       f"{', '.join(views) or 'none'}", "view")
    if caller.unit is None:
        raise Forbidden(f"{caller.name} is not a member of any unit", "unit")
    entitlement = points.check(session, get_unit(session, caller.unit), product, "download")
    owner = product.unit.slug
    return ExportPlan(product=product.name, version=product.current_version.version,
                      platform_unit=owner, view=f"{platform.database_for(owner)}.{view}",
                      format=fmt, entitlement_id=entitlement.id if entitlement else None)


def record_export(session: Session, caller: Caller, plan: ExportPlan, data: bytes, rows: int,
                  truncated: bool) -> tuple[str, int]:
    """Consume the per-use order and certify the exported bytes; returns (sha256, log index)."""
    entitlement = (session.get(Entitlement, plan.entitlement_id)
                   if plan.entitlement_id is not None else None)
    points.consume(session, entitlement)
    digest = hashlib.sha256(data).hexdigest()
    index = certlog.append(
        session, "download", caller.name, caller.unit, digest, product=plan.product,
        version=plan.version, view=plan.view.split(".", 1)[1], format=plan.format, rows=rows,
        truncated=truncated, order=entitlement.order_id if entitlement else None)
    return digest, index
