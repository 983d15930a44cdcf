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
import shutil
import tempfile
from pathlib import Path

from . import bundle as bundles
from .auth import SCOPE_PUBLISH, Caller
from .blobs import BlobStore, Staged
from .catalog import Submission, submit_version
from .errors import InvalidField
from .orm import write_transaction


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
