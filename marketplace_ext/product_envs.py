"""Which Python environment a product version runs in: the shared product kernel, or its own
environment built from the bundle's ``requirements.txt`` when an operator approves it.

The build itself is :mod:`marketplace_ext.envs`; this module reads a version's requirements,
records the environment's digest on the version and answers the runner's ``kernel_for``.
"""

from __future__ import annotations

import io
import json
import zipfile

from sqlalchemy.orm import Session

from .blobs import BlobStore
from .envs import EnvironmentBuilder, EnvStatus
from .errors import MarketError
from .orm import Run, Version


class EnvironmentNotReady(MarketError):
    """A version's own environment failed to build or is not built yet."""

    status = 409
    code = "environment_not_ready"


def requirements_of(blobs: BlobStore, version: Version) -> str | None:
    """The text of the version's declared requirements file, or None without one."""
    path = json.loads(version.manifest).get("requirements")
    if not path:
        return None
    with zipfile.ZipFile(io.BytesIO(blobs.get(version.sha256))) as archive:
        return archive.read(path).decode("utf-8")


def env_status(builder: EnvironmentBuilder, version: Version) -> EnvStatus | None:
    return builder.status(version.env_digest) if version.env_digest else None


def environments(builder: EnvironmentBuilder, product, caller) -> dict[str, dict]:
    """Each version's own environment by version; pip's log only for the publisher's unit and
    operators, who can act on it."""
    insider = caller.is_operator or caller.unit == product.unit.slug
    out = {}
    for v in product.versions:
        if v.env_digest:
            status = builder.status(v.env_digest).to_dict()
            if not insider:
                status.update(error=None, log_tail=None)
            out[v.version] = status
    return out


def kernel_for(builder: EnvironmentBuilder):
    """The runner's hook: the version's own kernel once its environment is ready. A run of a
    version whose environment failed or is still building fails (and is refunded) rather than
    running in an environment its author did not ask for."""

    def kernel(session: Session, run: Run) -> str | None:
        if run.mode == "m2d":
            return None  # the demander's notebook runs in the owner's product kernel
        version = session.get(Version, run.version_id)
        status = env_status(builder, version)
        if status is None:
            return None
        if status.state == "ready":
            return status.kernel_name
        if status.state == "failed":
            raise EnvironmentNotReady(f"the product's environment failed to build: "
                                      f"{status.error}", "version")
        raise EnvironmentNotReady("the product's environment is still being built; try again "
                                  "in a few minutes", "version")

    return kernel


def approve_environment(session: Session, blobs: BlobStore, builder: EnvironmentBuilder,
                        version: Version) -> str | None:
    """Record the environment an approved version needs; returns the requirements text to
    build (outside the transaction), or None when it has none or it is built already."""
    text = requirements_of(blobs, version)
    if text is None:
        return None
    version.env_digest = builder.digest(text)
    session.flush()
    return None if builder.status(version.env_digest).state == "ready" else text
