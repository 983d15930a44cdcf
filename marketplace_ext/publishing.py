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

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import bundle as bundles
from .auth import SCOPE_APPROVE, SCOPE_PUBLISH, Caller
from .blobs import BlobStore, Staged
from .catalog import Submission, submit_version
from .errors import InvalidField, MarketError
from .exchange import inbox
from .orm import Product, Version, write_transaction


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


async def publish_upload(market, caller: Caller, data: bytes, accept_terms: bool,
                         within: Callable[[Session, Version, bool], dict] | None = None) -> dict:
    """Validate and record an uploaded bundle; returns product, version, sha256, state and
    whether the version is new. ``within(session, version, created)``, if given, runs in the
    same transaction (a federated project's co-owned model) and adds to the result; raising
    there writes nothing."""
    caller.require(SCOPE_PUBLISH, "publishing a product")
    if not accept_terms:
        raise InvalidField(
            "publishing needs the sharing agreement accepted (accept_terms=true); read it at "
            "api/terms", "accept_terms",
        )
    workdir = Path(tempfile.mkdtemp(prefix="upload-", dir=market.tmp_dir))
    try:
        sub, staged = await market.in_io(_prepare, data, market.bundle_limits, workdir,
                                         market.blobs)
    finally:
        await market.in_io(shutil.rmtree, workdir, True)
    try:
        return await market.in_db(_record_submission, market, caller, sub, staged, within)
    finally:
        await market.in_io(staged.discard)


def _record_submission(session: Session, market, caller: Caller, sub: Submission,
                       staged: Staged, within=None) -> dict:
    """Blocking (the db executor): record the version and commit its staged archive."""
    write_transaction(session)
    # the product's unit and the agreement are checked here: only then is it stored
    version, created = submit_version(session, market.signer, caller, sub, market.sharing_terms)
    result = {"product": version.product.name, "version": version.version,
              "sha256": version.sha256, "state": version.state, "created": created,
              "log_index": version.log_index}
    if within is not None:
        result.update(within(session, version, created))
    # a rename; if the commit then fails, the blob is an orphan for blob_gc, never a row
    # without its blob
    staged.commit()
    session.commit()
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
        manifest, sha256 = await market.in_io(_check, data, market.bundle_limits, workdir)
    except (bundles.BundleInvalid, bundles.BundleTooLarge) as e:
        return {"valid": False, "problems": [vars(p) for p in e.problems], "product": None,
                "version": None, "sha256": None, "new_product": None, "same_as": None,
                "previous": None}
    finally:
        await market.in_io(shutil.rmtree, workdir, True)
    found, facts = await market.in_db(check_submission, caller, manifest, sha256)
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
    from . import interface  # it pulls in the platform

    caller.require(SCOPE_APPROVE, "reviewing a version")
    if decision == "approve":
        found = await market.in_db(_views_to_publish, caller, product, version)
        if found is not None:
            unit, views = found
            await market.in_spark(interface.publish_views, market.data_platform, unit, views)
    result, build = await market.in_db(_record_review, market, caller, product, version,
                                       decision, reason)
    if build is not None:
        market.build_environment(build)
    return result


def _views_to_publish(session: Session, caller: Caller, product: str,
                      version: str) -> tuple[str, list] | None:
    """A submitted data product's views and its unit (built before it is approved)."""
    from . import catalog

    p = catalog.get_product(session, product, caller)
    v = catalog.get_version(p, version)
    if p.kind != "data" or v.state != catalog.SUBMITTED:
        return None
    return p.unit.slug, json.loads(v.manifest).get("views", [])


def _record_review(session: Session, market, caller: Caller, product: str, version: str,
                   decision: object, reason: object) -> tuple[dict, str | None]:
    """Blocking (the db executor): the decision, its notification and an approved version's
    environment; returns the version's JSON and the requirements to build, if any."""
    from . import catalog, product_envs

    write_transaction(session)
    p = catalog.get_product(session, product, caller)
    v = catalog.get_version(p, version)
    catalog.review(session, caller, p, v, decision, reason)
    outcome = "approved" if v.state == catalog.ON_SHELF else "rejected"
    inbox.notify_unit(session, p.unit, "version_decided",
                      f"Version {v.version} of {p.name} was {outcome}", f"publish/{p.name}",
                      body=v.reason or "", exclude=[caller.name], ref=f"version:{v.id}:{outcome}")
    build = None
    if v.state == catalog.ON_SHELF:
        build = product_envs.approve_environment(session, market.blobs, market.envs, v)
    session.commit()
    return catalog.version_json(v, full=True), build
