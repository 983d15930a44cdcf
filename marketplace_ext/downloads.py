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

from . import sharing
from .auth import Caller
from .blobs import BlobStore
from .errors import InvalidField, NotFound
from .orm import Version

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

    Other units get the version on sale; the owning unit's publishers and operators any
    version (a preview); an operator in no unit inspects without an order.
    """
    grant = sharing.authorize_use(session, caller, product_name, "download", version=version,
                                  inspection=True)
    v = session.get(Version, grant.version_id)
    digests = json.loads(v.file_digests)
    if path not in digests:
        raise NotFound(f"version {version} of {product_name!r} has no file {path!r}", "path")
    with zipfile.ZipFile(io.BytesIO(blobs.get(v.sha256))) as archive:
        data = archive.read(path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != digests[path]:  # the stored archive no longer matches what was certified
        raise NotFound(f"{path} of {product_name} {version} failed its integrity check", "path")
    index = sharing.record_use(session, caller, grant, "download", digest, path=path,
                               bundle_sha256=v.sha256)
    return Delivery(data=data, sha256=digest, log_index=index,
                    filename=path.rsplit("/", 1)[-1])


@dataclass(frozen=True)
class ExportPlan:
    """An authorized export of a data product's view, to run outside any transaction."""

    grant: sharing.Grant
    platform_unit: str  # the publisher's unit: its platform holds the view
    view: str  # qualified: unit_x.name
    format: str

    @property
    def product(self) -> str:
        return self.grant.product

    @property
    def version(self) -> str:
        return self.grant.version


def plan_export(session: Session, platform, caller: Caller, product_name: str, view: str,
                fmt: str) -> ExportPlan:
    """Check the caller may download ``view`` of a data product (its desensitized view, never
    a source table) in ``fmt``."""
    grant = sharing.authorize_use(session, caller, product_name, "download", kinds=("data",),
                                  kind_rule="only data products export views")
    if fmt not in EXPORT_FORMATS:
        raise InvalidField(f"format must be one of {', '.join(EXPORT_FORMATS)}", "format")
    manifest = json.loads(session.get(Version, grant.version_id).manifest)
    views = [v["view"] for v in manifest.get("views", [])]
    if view not in views:
        raise NotFound(f"{product_name!r} publishes no view {view!r}; its views: "
                       f"{', '.join(views) or 'none'}", "view")
    return ExportPlan(grant=grant, platform_unit=grant.owner_unit,
                      view=f"{platform.database_for(grant.owner_unit)}.{view}", format=fmt)


def record_export(session: Session, caller: Caller, plan: ExportPlan, data: bytes, rows: int,
                  truncated: bool) -> tuple[str, int]:
    """Consume the per-use order and certify the exported bytes; returns (sha256, log index)."""
    digest = hashlib.sha256(data).hexdigest()
    index = sharing.record_use(session, caller, plan.grant, "download", digest,
                               view=plan.view.split(".", 1)[1], format=plan.format, rows=rows,
                               truncated=truncated)
    return digest, index
