"""The download sharing mode: a file of a product version, or a data product's desensitized view
exported to CSV/Parquet, behind the entitlement gate and certified in the log with its sha256,
so the receiver can verify it offline later."""

from __future__ import annotations

import hashlib
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


@dataclass(frozen=True)
class FilePlan:
    """An authorized download of one file of a version, to take out of its bundle outside any
    transaction (:func:`extract_file`) and then to record (:func:`record_file`)."""

    grant: sharing.Grant
    bundle_sha256: str
    path: str
    sha256: str  # the file's certified digest

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def plan_file(session: Session, caller: Caller, product_name: str, version: str,
              path: str) -> FilePlan:
    """Check the caller may download ``path`` of a version (nothing spent yet).

    Other units get the version on sale; the owning unit's publishers and operators any
    version (a preview); an operator in no unit inspects without an order.
    """
    grant = sharing.authorize_use(session, caller, product_name, "download", version=version,
                                  inspection=True)
    v = session.get(Version, grant.version_id)
    digests = json.loads(v.file_digests)
    if path not in digests:
        raise NotFound(f"version {version} of {product_name!r} has no file {path!r}", "path")
    return FilePlan(grant=grant, bundle_sha256=v.sha256, path=path, sha256=digests[path])


def extract_file(blobs: BlobStore, plan: FilePlan) -> str:
    """Blocking (the io executor): take the file out of the stored bundle (read from the
    archive's file, never the whole bundle into memory), check it against its certified digest
    and store it as a blob; returns its sha256. Stored before the use is recorded: a failure
    after this leaves an orphan blob (blob_gc collects it), never a spent use without its
    file."""
    with blobs.open(plan.bundle_sha256) as f, zipfile.ZipFile(f) as archive:
        data = archive.read(plan.path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != plan.sha256:  # the stored archive no longer matches what was certified
        raise NotFound(f"{plan.path} of {plan.grant.product} {plan.grant.version} failed its "
                       "integrity check", "path")
    blobs.put(data)
    return digest


def record_file(session: Session, caller: Caller, plan: FilePlan) -> int:
    """Consume one use and certify the delivered file (in the caller's write transaction);
    returns the log index."""
    return sharing.record_use(session, caller, plan.grant, "download", plan.sha256,
                              path=plan.path, bundle_sha256=plan.bundle_sha256)


def deliver_file(session: Session, blobs: BlobStore, caller: Caller, product_name: str,
                 version: str, path: str) -> Delivery:
    """:func:`plan_file`, :func:`extract_file` and :func:`record_file` in one blocking call
    (scripts and tests; handlers run the middle step on the io executor)."""
    plan = plan_file(session, caller, product_name, version, path)
    extract_file(blobs, plan)
    index = record_file(session, caller, plan)
    return Delivery(data=blobs.get(plan.sha256), sha256=plan.sha256, log_index=index,
                    filename=plan.filename)


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
