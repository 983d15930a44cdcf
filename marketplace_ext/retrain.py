"""Further training (the paper's "secondary training"): a subscriber retrains a tool on its own
unit's data and gets a derived model version, private to its unit, usable through ``predict``
like the original.

A tool offers it in its manifest (``further_training``: the bool ``parameter`` that switches
training on, the bundle file ``model`` to replace, the declared ``output`` holding the trained
model and the declared ``data_digest`` output, JSON ``{sha256, rows}`` of the training data).

1. :func:`submit` passes the sharing gate as a remote run of the tool (an entitlement of the
   caller's unit; one per-use order is spent), queues a run of mode ``retrain`` on the caller's
   unit platform with the training parameter set, and records a :class:`DerivedModel`
   ``training``.
2. When the run ends (:func:`finish`, the runner's ``on_finished``, in its transaction), the run
   is refunded if it failed and certified as every run is; on success the base version's
   bundle with ``model`` replaced by the run's output becomes the derived bundle (a blob), and
   the lineage - base version and bundle digest, parameters, training data digest and row
   count, model digest, derived bundle digest, the run - is certified (``derived_model``).
3. A remote call naming ``"model": <id>`` (:func:`model_for_call`) runs the derived bundle in
   the predict pool instead of the base version's; only the owning unit may name it, and only
   while the base version is the one the product sells.

Only the base version's reviewed code ever runs: a derived bundle differs from it in the model
file alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import zipfile

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import certlog, remote_run, sharing
from .auth import Caller
from .blobs import BlobStore
from .bundle import ZIP_EPOCH
from .errors import Conflict, InvalidField, NotFound
from .ids import parse_id
from .orm import Product, Run, Unit, Version, utcnow
from .retrain_orm import DerivedModel
from .run_queue import RunRequest, queue_run
from .runner import validate_parameters

MODE = "retrain"
STATES = ("training", "ready", "failed")
MAX_MODEL_BYTES = 50 * 2**20
_SHA256 = re.compile(r"[0-9a-f]{64}")


def training_spec(version: Version) -> dict | None:
    """The version's ``further_training`` manifest entry, or None if it offers none."""
    spec = json.loads(version.manifest or "{}").get("further_training")
    return spec if isinstance(spec, dict) else None


def submit(session: Session, caller: Caller, product_name: object, body: dict,
           default_timeout: int, max_timeout: int) -> tuple[DerivedModel, Run]:
    """Check, charge and queue a training run; the caller commits and kicks the runner."""
    grant = sharing.authorize_use(session, caller, product_name, "remote_run",
                                  version=body.get("version"), kinds=("tool",),
                                  kind_rule="only tools are retrained")
    version = session.get(Version, grant.version_id)
    spec = training_spec(version)
    if spec is None:
        raise InvalidField(f"{grant.product!r} does not offer further training", "product")
    given = body.get("parameters", {})
    if not isinstance(given, dict):
        raise InvalidField("parameters must be an object", "parameters")
    switch = spec["parameter"]
    if given.get(switch, True) is not True:
        raise InvalidField(f"{switch} is what makes this run a training: leave it out or true",
                           f"parameters.{switch}")
    if body.get("data", "platform") != "platform":
        raise InvalidField("further training reads your unit's data platform: data must be "
                           "'platform'", "data")
    timeout = body.get("timeout_seconds", default_timeout)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= max_timeout:
        raise InvalidField(f"timeout_seconds must be an integer from 1 to {max_timeout}",
                           "timeout_seconds")
    parameters = validate_parameters(json.loads(version.parameters), {**given, switch: True})
    run = queue_run(session, RunRequest(
        product_id=grant.product_id, version_id=grant.version_id, unit_id=grant.unit_id,
        user=caller.name, mode=MODE, parameters=parameters, timeout_seconds=timeout,
        entitlement_id=grant.entitlement_id))
    sharing.consume_use(session, grant)  # refunded by finish() if the run fails
    derived = DerivedModel(product_id=grant.product_id, base_version_id=grant.version_id,
                           unit_id=grant.unit_id, run_id=run.id, created_by=caller.name,
                           state="training", parameters=json.dumps(parameters, sort_keys=True))
    session.add(derived)
    session.flush()
    return derived, run


def derive_bundle(base: bytes, path: str, content: bytes) -> bytes:
    """The base bundle zip with ``path`` replaced by ``content``, written canonically like
    :func:`.bundle.canonical_archive` (sorted, stored, fixed time and mode)."""
    with zipfile.ZipFile(io.BytesIO(base)) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}
    if path not in members:
        raise ValueError(f"the base bundle has no {path!r}")
    members[path] = content
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, members[name])
    return buf.getvalue()


def _training_digest(raw: bytes) -> tuple[str, int]:
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    sha, rows = (value.get("sha256"), value.get("rows")) if isinstance(value, dict) else (None,
                                                                                          None)
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha) or not isinstance(rows, int) \
            or isinstance(rows, bool) or rows < 0:
        raise ValueError("the training data digest must be JSON {\"sha256\": 64 hex digits, "
                         "\"rows\": a count}")
    return sha, rows


def finish(session: Session, blobs: BlobStore, run: Run) -> None:
    """The runner's ``on_finished`` for a training run (inside its write transaction)."""
    remote_run.finish_run(session, run)  # refund on failure, certify the run
    derived = session.scalar(select(DerivedModel).where(DerivedModel.run_id == run.id))
    if derived is None:
        return
    derived.finished_at = utcnow()
    if run.status != "succeeded":
        derived.state, derived.error = "failed", f"the training run {run.status}"
        return
    version = session.get(Version, derived.base_version_id)
    spec = training_spec(version) or {}
    artifacts = json.loads(run.artifacts or "{}")
    try:
        model_sha, digest_sha = artifacts[spec["output"]], artifacts[spec["data_digest"]]
        data_sha, rows = _training_digest(blobs.get(digest_sha))
        bundle = derive_bundle(blobs.get(version.sha256), spec["model"], blobs.get(model_sha))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        derived.state = "failed"
        derived.error = f"no derived model: {e if isinstance(e, ValueError) else 'missing output'}"
        return
    derived.bundle_sha256 = blobs.put(bundle)
    derived.model_sha256, derived.data_sha256, derived.data_rows = model_sha, data_sha, rows
    derived.state = "ready"
    product = session.get(Product, derived.product_id)
    unit = session.get(Unit, derived.unit_id)
    derived.log_index = certlog.append(
        session, "derived_model", run.user, unit.slug, derived.bundle_sha256,
        derived_model=derived.id, product=product.name, version=version.version,
        base_bundle_sha256=version.sha256, run=run.id, run_log_index=run.log_index,
        parameters=json.loads(derived.parameters),
        parameters_sha256=hashlib.sha256(derived.parameters.encode()).hexdigest(),
        data_sha256=data_sha, data_rows=rows, model_sha256=model_sha)


def _visible(session: Session, caller: Caller, derived: DerivedModel | None) -> bool:
    if derived is None:
        return False
    if caller.is_operator:
        return True
    unit = session.get(Unit, derived.unit_id)
    return caller.unit is not None and unit.slug == caller.unit


def get_model(session: Session, caller: Caller, model_id: object) -> DerivedModel:
    """A derived model its unit (or an operator) may see; others get 404: it is private."""
    derived = session.get(DerivedModel, parse_id(model_id, "derived model", "model"))
    if not _visible(session, caller, derived):
        raise NotFound(f"no derived model {str(model_id)[:40]!r}", "model")
    return derived


def list_models(session: Session, caller: Caller, product: str | None = None
                ) -> list[DerivedModel]:
    """The caller's unit's derived models (every unit's for an operator), newest first."""
    query = select(DerivedModel).order_by(DerivedModel.id.desc())
    if not caller.is_operator:
        if caller.unit is None:
            return []
        query = query.join(Unit, Unit.id == DerivedModel.unit_id).where(Unit.slug == caller.unit)
    if product:
        query = query.join(Product, Product.id == DerivedModel.product_id).where(
            Product.name == product)
    return list(session.scalars(query.limit(500)))


def model_for_call(session: Session, caller: Caller, grant: sharing.Grant,
                   model_id: object) -> DerivedModel:
    """The derived model a remote call names: the caller's unit's, of this product, ready, and
    trained from the version the product sells now."""
    derived = get_model(session, caller, model_id)
    unit = session.get(Unit, derived.unit_id)
    if derived.product_id != grant.product_id or unit.slug != grant.unit:
        raise NotFound(f"no derived model {model_id!r} of {grant.product!r}", "model")
    if derived.state != "ready":
        raise Conflict(f"derived model {derived.id} is {derived.state}", "model")
    if derived.base_version_id != grant.version_id:
        base = session.get(Version, derived.base_version_id)
        raise Conflict(f"derived model {derived.id} was trained from version {base.version}; "
                       f"{grant.product!r} now sells {grant.version}: retrain it", "model")
    return derived


def model_json(session: Session, derived: DerivedModel, prefix: str = "") -> dict:
    product = session.get(Product, derived.product_id)
    version = session.get(Version, derived.base_version_id)
    unit = session.get(Unit, derived.unit_id)
    return {
        "id": derived.id, "product": product.name, "base_version": version.version,
        "unit": unit.slug, "state": derived.state, "error": derived.error,
        "created_by": derived.created_by, "parameters": json.loads(derived.parameters),
        "run": derived.run_id, "run_url": f"{prefix}api/runs/{derived.run_id}",
        "created_at": derived.created_at.isoformat() + "Z",
        "finished_at": derived.finished_at.isoformat() + "Z" if derived.finished_at else None,
        "lineage": {
            "base_bundle_sha256": version.sha256,
            "parameters_sha256": hashlib.sha256(derived.parameters.encode()).hexdigest(),
            "data_sha256": derived.data_sha256, "data_rows": derived.data_rows,
            "model_sha256": derived.model_sha256, "bundle_sha256": derived.bundle_sha256,
        },
        "log_index": derived.log_index,
    }
