"""The download sharing mode: a file of a product version, behind the entitlement gate and
certified in the log with its sha256, so the receiver can verify it offline later."""

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
from .errors import Forbidden, NotFound
from .units import get_unit


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
