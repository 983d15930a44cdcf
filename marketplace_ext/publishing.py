"""Publishing an uploaded bundle: unpack and validate it again (never trust the client), store
its canonical archive content-addressed, and record the version with its signed agreement.

The slow, blocking steps (unzip, nbformat/papermill inspection, zipping, writing the archive)
run in an executor so the service's event loop stays responsive. Nothing is stored before it is
authorized: the archive is only *staged* (written under a temporary name) until
:func:`~.catalog.submit_version` has accepted the caller for that product (its unit, the
agreement); then it is renamed into the blob store in the same transaction, and a refused or
failed upload leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import bundle as bundles
from .auth import SCOPE_APPROVE, SCOPE_PUBLISH, Caller
from .blobs import BlobStore, Staged
from .catalog import Submission, submit_version
from .errors import InvalidField, MarketError
from .exchange import inbox
from .orm import Product, write_transaction


def _prepare(data: bytes, limits: bundles.BundleLimits, workdir: Path,
             blobs: BlobStore) -> tuple[Submission, Staged]:
    root = bundles.extract_upload(data, workdir / "bundle", limits)
    loaded = bundles.load_bundle(root, limits)
    archive = bundles.canonical_archive(root)
    digests = {path: hashlib.sha256((root / path).read_bytes()).hexdigest()
               for path in loaded.files}
    sub = Submission(
        manifest=loaded.manifest, parameters=loaded.parameters, readme=loaded.readme,
        files=loaded.files, sha256=bundles.archive_sha256(archive), size=len(archive),
        file_digests=digests,
    )
    return sub, blobs.stage(archive)


async def publish_upload(market, caller: Caller, data: bytes, accept_terms: bool) -> dict:
    """Validate and record an uploaded bundle; returns product, version, sha256, state and
    whether the version is new."""
    caller.require(SCOPE_PUBLISH, "publishing a product")
    if not accept_terms:
        raise InvalidField(
            "publishing needs the sharing agreement accepted (accept_terms=true); read it at "
            "api/terms", "accept_terms",
        )
    workdir = Path(tempfile.mkdtemp(prefix="upload-", dir=market.tmp_dir))
    try:
        sub, staged = await asyncio.get_running_loop().run_in_executor(
            None, _prepare, data, market.bundle_limits, workdir, market.blobs
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    try:
        with market.session_factory() as session:
            write_transaction(session)
            # the product's unit and the agreement are checked here: only then is it stored
            version, created = submit_version(session, market.signer, caller, sub,
                                              market.sharing_terms)
            result = {"product": version.product.name, "version": version.version,
                      "sha256": version.sha256, "state": version.state, "created": created,
                      "log_index": version.log_index}
            # a rename; if the commit then fails, the blob is an orphan for blob_gc, never a
            # row without its blob
            staged.commit()
            session.commit()
    finally:
        staged.discard()
    return result


def check_submission(session: Session, caller: Caller, manifest: dict,
                     sha256: str) -> tuple[list[tuple[str, str]], dict]:
    """What :func:`submit_version` would say about a valid bundle, without writing anything:
    ``(problems as (field, message), facts)``. Facts: ``new_product``, ``same_as`` (the
    version with these exact bytes), ``previous`` (the latest version before it)."""
    problems: list[tuple[str, str]] = []
    facts: dict = {"new_product": True, "same_as": None, "previous": None}
    if SCOPE_PUBLISH not in caller.scopes:
        problems.append(("bundle", "publishing needs the publisher role"))
    if caller.unit is None:
        problems.append(("unit", f"{caller.name} is not a member of any unit; ask an operator"))
    product = session.scalar(select(Product).where(Product.name == manifest.get("name")))
    if product is None:
        return problems, facts
    facts["new_product"] = False
    if caller.unit is not None and product.unit.slug != caller.unit:
        problems.append(("name", f"product {product.name!r} belongs to another unit; choose "
                                 "another name"))
        return problems, facts
    if product.kind != manifest.get("kind"):
        problems.append(("kind", f"product {product.name!r} is a {product.kind} product, not "
                                 f"{manifest.get('kind')}"))
    if product.versions:
        facts["previous"] = product.versions[-1].version
    for existing in product.versions:
        if existing.sha256 == sha256:
            facts["same_as"] = existing.version
        elif existing.version == manifest.get("version"):
            problems.append(("version", f"version {existing.version} of {product.name!r} exists "
                                        "with different content; bump the version"))
    return problems, facts


def _check(data: bytes, limits: bundles.BundleLimits, workdir: Path) -> tuple[dict, str]:
    """Blocking: unpack and validate (raises the bundle's problems); the manifest and the
    sha256 the version would have."""
    root = bundles.extract_upload(data, workdir / "bundle", limits)
    loaded = bundles.load_bundle(root, limits)
    return loaded.manifest, bundles.archive_sha256(bundles.canonical_archive(root))


async def check_upload(market, caller: Caller, data: bytes) -> dict:
    """Everything :func:`publish_upload` would refuse, found without storing or recording
    anything: ``{"valid", "problems": [{file, field, message}], "product", "version",
    "sha256", "new_product", "same_as", "previous"}``."""
    caller.require(SCOPE_PUBLISH, "publishing a product")
    workdir = Path(tempfile.mkdtemp(prefix="check-", dir=market.tmp_dir))
    try:
        manifest, sha256 = await asyncio.get_running_loop().run_in_executor(
            None, _check, data, market.bundle_limits, workdir)
    except (bundles.BundleInvalid, bundles.BundleTooLarge) as e:
        return {"valid": False, "problems": [vars(p) for p in e.problems], "product": None,
                "version": None, "sha256": None, "new_product": None, "same_as": None,
                "previous": None}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    with market.session_factory() as session:
        found, facts = check_submission(session, caller, manifest, sha256)
    problems = [{"file": bundles.MANIFEST, "field": field, "message": message}
                for field, message in found]
    return {"valid": not problems, "problems": problems, "product": manifest["name"],
            "version": manifest["version"], "sha256": sha256, **facts}


def problems_of(error: MarketError) -> list[dict]:
    """The ``{file, field, message}`` list of a refused upload (one item for a plain error)."""
    listed = getattr(error, "problems", None)
    if listed:
        return [vars(p) for p in listed]
    return [{"file": "", "field": error.field, "message": error.message}]


async def review_version(market, caller: Caller, product: str, version: str,
                         decision: object, reason: object) -> dict:
    """An operator's decision on a submitted version: a data product's views are built on its
    unit's platform first (outside any transaction: Spark is slow, and a failure approves
    nothing), then the decision is recorded and an approved version's environment queued."""
    from . import catalog, interface, product_envs  # interface pulls in the platform

    caller.require(SCOPE_APPROVE, "reviewing a version")
    if decision == "approve":
        with market.session_factory() as session:
            p = catalog.get_product(session, product, caller)
            v = catalog.get_version(p, version)
            views = (json.loads(v.manifest).get("views", [])
                     if p.kind == "data" and v.state == catalog.SUBMITTED else None)
            unit = p.unit.slug
        if views is not None:
            await asyncio.get_running_loop().run_in_executor(
                None, interface.publish_views, market.data_platform, unit, views)
    with market.session_factory() as session:
        write_transaction(session)
        p = catalog.get_product(session, product, caller)
        v = catalog.get_version(p, version)
        catalog.review(session, caller, p, v, decision, reason)
        outcome = "approved" if v.state == catalog.ON_SHELF else "rejected"
        inbox.notify_unit(session, p.unit, "version_decided",
                          f"Version {v.version} of {p.name} was {outcome}", f"publish/{p.name}",
                          body=v.reason or "", exclude=[caller.name],
                          ref=f"version:{v.id}:{outcome}")
        build = None
        if v.state == catalog.ON_SHELF:
            build = product_envs.approve_environment(session, market.blobs, market.envs, v)
        session.commit()
        result = catalog.version_json(v, full=True)
    if build is not None:
        market.build_environment(build)
    return result
