"""The model-to-data sharing mode: a demander's training notebook goes to the data, not the data
to the demander.

A subscriber submits a notebook against a data product (:func:`submit`); the owning unit's
publishers read its code and approve or reject it (:func:`decide`); an approved request runs on
the owner's platform against the private tables as a runner job of mode ``m2d``. The executed
notebook and every output stay with the owner; only the files the request declared come back,
and only if they pass :func:`check_output` (an allow-list of model formats, checked by content,
and a size limit). Submission refuses outputs that would carry table rows (CSV, Parquet, ...).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import nbformat
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from . import certlog, points, sharing
from .auth import SCOPE_PUBLISH, Caller
from .errors import Conflict, Forbidden, InvalidField, NotFound, PayloadTooLarge
from .exchange import inbox
from .ids import parse_id
from .m2d_outputs import (
    OUTPUT_TYPES,
    ROW_FORMATS,
    OutputRefused,
    check_output,
    check_output_schemas,
    error_category,
)
from .orm import ModelToDataRequest, Product, Run, Unit, utcnow
from .runner import RunRequest, queue_run, validate_parameters
from .units import get_unit

log = logging.getLogger(__name__)

MAX_NOTEBOOK_BYTES = 768 * 1024  # inside a JSON body of at most 1 MiB
MAX_OUTPUTS = 5
MAX_PURPOSE_CHARS = 2000
NOTEBOOK_PATH = "m2d.ipynb"

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _check_outputs(outputs: object) -> list[str]:
    if not isinstance(outputs, list) or not outputs:
        raise InvalidField("outputs is required: the files to return, e.g. "
                           '["outputs/model.pt"]', "outputs")
    if len(outputs) > MAX_OUTPUTS:
        raise InvalidField(f"at most {MAX_OUTPUTS} outputs may be declared", "outputs")
    checked: list[str] = []
    for i, path in enumerate(outputs):
        field = f"outputs[{i}]"
        if not isinstance(path, str):
            raise InvalidField("each output is a path such as 'outputs/model.pt'", field)
        parts = PurePosixPath(path).parts
        if len(parts) != 2 or parts[0] != "outputs" or not _SAFE_NAME.match(parts[1]):
            raise InvalidField(f"{path!r} must be a plain file name under outputs/, such as "
                               "'outputs/model.pt'", field)
        suffix = PurePosixPath(path).suffix.lower()
        if suffix in ROW_FORMATS:
            raise InvalidField(f"{path!r} is a table format: model-to-data returns models, "
                               "never rows of the owner's tables; declare one of "
                               f"{', '.join(OUTPUT_TYPES)}", field)
        if suffix not in OUTPUT_TYPES:
            raise InvalidField(f"{path!r}: only {', '.join(OUTPUT_TYPES)} files can be "
                               "returned", field)
        if path in checked:
            raise InvalidField(f"{path!r} is declared twice", field)
        checked.append(path)
    return checked


def read_notebook(raw: object) -> tuple[bytes, dict]:
    """The submitted notebook, validated as nbformat 4 Python; returns (bytes to store,
    papermill's parameter inspection)."""
    if isinstance(raw, str):
        text = raw
    elif isinstance(raw, dict):
        text = json.dumps(raw)
    else:
        raise InvalidField("notebook is required: the .ipynb document (JSON)", "notebook")
    data = text.encode()
    if len(data) > MAX_NOTEBOOK_BYTES:
        raise PayloadTooLarge(f"the notebook is {len(data)} bytes; the limit is "
                              f"{MAX_NOTEBOOK_BYTES}", "notebook")
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as e:  # nbformat raises several unrelated classes for bad documents
        raise InvalidField(f"notebook is not a valid Jupyter notebook: "
                           f"{(str(e).splitlines() or [type(e).__name__])[0][:300]}",
                           "notebook") from None
    language = (nb.metadata.get("kernelspec", {}).get("language")
                or nb.metadata.get("language_info", {}).get("name") or "python")
    if language != "python":
        raise InvalidField(f"notebook is a {language} notebook; the data side runs Python",
                           "notebook")
    # the owner's kernel runs it; a demander cannot pick an environment on the owner's side
    nb.metadata["kernelspec"] = {"name": "grid-python", "display_name": "Python (grid)",
                                 "language": "python"}
    data = nbformat.writes(nb).encode()
    import papermill  # slow to import

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / NOTEBOOK_PATH
        path.write_bytes(data)
        try:
            params = papermill.inspect_notebook(str(path))
        except Exception as e:  # papermill's failures are not one class
            raise InvalidField(f"papermill cannot inspect the notebook: {e}",
                               "notebook") from None
    return data, params


def submit(session: Session, blobs, caller: Caller, body: dict, notebook: bytes,
           inspected: dict, default_timeout: int, max_timeout: int) -> ModelToDataRequest:
    """Check, charge and store a request (pending the owner's decision); the caller commits."""
    grant = sharing.authorize_use(session, caller, body.get("product"), "model_to_data")
    if grant.own_product:
        raise InvalidField(f"your unit owns {grant.product!r}: run the notebook on your own "
                           "platform", "product")
    outputs = _check_outputs(body.get("outputs"))
    schemas = check_output_schemas(body.get("output_schemas"), outputs)
    purpose = body.get("purpose", "")
    if not isinstance(purpose, str) or len(purpose) > MAX_PURPOSE_CHARS:
        raise InvalidField(f"purpose must be text of at most {MAX_PURPOSE_CHARS} characters",
                           "purpose")
    timeout = body.get("timeout_seconds", default_timeout)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= max_timeout:
        raise InvalidField(f"timeout_seconds must be an integer from 1 to {max_timeout}",
                           "timeout_seconds")
    parameters = validate_parameters(inspected, body.get("parameters", {}))
    request = ModelToDataRequest(
        product_id=grant.product_id, version_id=grant.version_id, requester=caller.name,
        requester_unit_id=grant.unit_id, owner_unit_id=grant.owner_unit_id,
        purpose=purpose, notebook_sha256=blobs.put(notebook),
        parameters=json.dumps(parameters, sort_keys=True),
        outputs=json.dumps(outputs), output_schemas=json.dumps(schemas, sort_keys=True),
        timeout_seconds=timeout, entitlement_id=grant.entitlement_id, status="pending",
        released="{}", withheld="{}")
    session.add(request)
    session.flush()
    request.log_index = sharing.record_use(
        session, caller, grant, "m2d", request.notebook_sha256, request=request.id,
        event="submitted", outputs=outputs)
    inbox.notify_unit(session, request.owner_unit_id, "m2d_waiting",
                      f"A model-to-data request for {grant.product} waits for your decision",
                      f"m2d/{request.id}", body=purpose[:500], exclude=[caller.name],
                      ref=f"m2d:{request.id}")
    return request


def _owner_side(session: Session, caller: Caller, request: ModelToDataRequest) -> bool:
    owner = session.get(Unit, request.owner_unit_id)
    return caller.unit == owner.slug


def get_request(session: Session, caller: Caller, request_id: str) -> ModelToDataRequest:
    """A request its demander's unit, the owner's unit or an operator may see; to anybody else
    it does not exist."""
    request = session.get(ModelToDataRequest,
                          parse_id(request_id, "model-to-data request", "request"))
    if request is None:
        raise NotFound(f"no model-to-data request {request_id!r}", "request")
    requester_unit = session.get(Unit, request.requester_unit_id)
    if not (caller.is_operator or _owner_side(session, caller, request)
            or caller.unit == requester_unit.slug):
        raise NotFound(f"no model-to-data request {request_id!r}", "request")
    return request


def list_requests(session: Session, caller: Caller, status: str | None = None
                  ) -> list[ModelToDataRequest]:
    query = select(ModelToDataRequest).order_by(ModelToDataRequest.id.desc())
    if not caller.is_operator:
        if caller.unit is None:
            return []
        unit = get_unit(session, caller.unit)
        query = query.where(or_(ModelToDataRequest.owner_unit_id == unit.id,
                                ModelToDataRequest.requester_unit_id == unit.id))
    if status is not None:
        query = query.where(ModelToDataRequest.status == status)
    return list(session.scalars(query.limit(200)))


def decide(session: Session, caller: Caller, request: ModelToDataRequest, body: dict
           ) -> ModelToDataRequest:
    """The owner's publisher approves (queues the run on the owner's platform) or rejects
    (refunds a per-use order). The caller commits and, on approval, kicks the runner."""
    caller.require(SCOPE_PUBLISH, "deciding a model-to-data request")
    if not _owner_side(session, caller, request):
        raise Forbidden("only the data owner's publishers decide its model-to-data requests",
                        "request")
    decision, reason = body.get("decision"), body.get("reason")
    if decision not in ("approve", "reject"):
        raise InvalidField("decision must be 'approve' or 'reject'", "decision")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_PURPOSE_CHARS):
        raise InvalidField(f"reason must be text of at most {MAX_PURPOSE_CHARS} characters",
                           "reason")
    if decision == "reject" and not (reason or "").strip():
        raise InvalidField("a rejection needs a reason the demander can act on", "reason")
    if request.status != "pending":
        raise Conflict(f"request {request.id} was {request.status} already", "request")
    request.status = "approved" if decision == "approve" else "rejected"
    request.decided_by, request.decided_at, request.reason = caller.name, utcnow(), reason
    refunded = False
    if decision == "approve":
        run = queue_run(session, RunRequest(
            product_id=request.product_id, version_id=request.version_id,
            unit_id=request.owner_unit_id, user=request.requester, mode="m2d",
            parameters=json.loads(request.parameters), timeout_seconds=request.timeout_seconds,
            entitlement_id=request.entitlement_id))
        request.run_id = run.id
    else:
        refunded = points.refund_use(session, request.entitlement_id, caller.name,
                              f"model-to-data request {request.id} rejected: {reason}")
    session.flush()
    certlog.append(session, "m2d", caller.name, caller.unit, request.notebook_sha256,
                   request=request.id, event=request.status, run=request.run_id,
                   refunded=refunded)
    inbox.notify(session, [request.requester], "m2d_decided",
                 f"Your model-to-data request {request.id} was {request.status}",
                 f"m2d/{request.id}", body=reason or "", ref=f"m2d:{request.id}")
    return request


def bundle_for(session: Session, blobs, run: Run) -> tuple[bytes, str, list[str]]:
    """The runner's job of an approved request: the demander's notebook alone."""
    request = session.scalar(select(ModelToDataRequest).where(ModelToDataRequest.run_id == run.id))
    notebook = blobs.get(request.notebook_sha256)
    # the owner approved exactly these bytes (the digest was certified at submission and
    # decision): a blob changed on disk since must not run on the owner's data
    if hashlib.sha256(notebook).hexdigest() != request.notebook_sha256:
        raise Conflict(f"the notebook of request {request.id} no longer matches the digest the "
                       "owner approved", "request")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(NOTEBOOK_PATH, notebook)
    return buffer.getvalue(), NOTEBOOK_PATH, json.loads(request.outputs)


def finish(session: Session, blobs, run: Run, max_output_bytes: int) -> None:
    """Decide what goes back once the run ended; refund a per-use order of a run that failed."""
    request = session.scalar(select(ModelToDataRequest).where(ModelToDataRequest.run_id == run.id))
    produced = json.loads(run.artifacts or "{}")
    released: dict[str, str] = {}
    withheld: dict[str, str] = {}
    schemas = json.loads(request.output_schemas or "{}")
    if run.status == "succeeded":
        for path in json.loads(request.outputs):
            sha = produced.get(path)
            if sha is None:
                withheld[path] = "the notebook did not write it"
                continue
            try:
                check_output(path, blobs.get(sha), max_output_bytes, schemas.get(path))
            except OutputRefused as e:
                withheld[path] = str(e)
                continue
            released[path] = sha
    refunded = False
    if run.status != "succeeded":
        refunded = points.refund_use(session, request.entitlement_id, "runner",
                              f"model-to-data run {run.id} {run.status}")
    request.released, request.withheld = json.dumps(released), json.dumps(withheld)
    product = session.get(Product, run.product_id)
    owner = session.get(Unit, request.owner_unit_id)
    run.log_index = certlog.append(
        session, "m2d", "runner", owner.slug, request.notebook_sha256, request=request.id,
        event="finished", run=run.id, product=product.name, status=run.status,
        output_sha256=run.output_sha256, released=released, withheld=withheld,
        refunded=refunded)


def released_sha(request: ModelToDataRequest, path: str) -> str:
    """The blob of a file the run returned to its demander (404 if it was withheld)."""
    sha = json.loads(request.released).get(path)
    if sha is None:
        why = json.loads(request.withheld).get(path)
        raise NotFound(f"{path!r} was not returned" + (f": {why}" if why else ""), "path")
    return sha


def notebook_cells(blobs, request: ModelToDataRequest) -> list[dict]:
    """The submitted notebook's cells as ``{cell_type, source}``, for reading (the template
    escapes them)."""
    nb = nbformat.reads(blobs.get(request.notebook_sha256).decode(), as_version=4)
    return [{"cell_type": c.cell_type, "source": c.source} for c in nb.cells]


def request_json(session: Session, caller: Caller, request: ModelToDataRequest, prefix: str,
                 with_code: bool = False) -> dict:
    product = session.get(Product, request.product_id)
    run = session.get(Run, request.run_id) if request.run_id else None
    owner_side = caller.is_operator or _owner_side(session, caller, request)
    base = f"{prefix}api/m2d/{request.id}"
    out = {
        "id": request.id, "product": product.name, "requester": request.requester,
        "requester_unit": session.get(Unit, request.requester_unit_id).slug,
        "owner_unit": session.get(Unit, request.owner_unit_id).slug,
        "purpose": request.purpose, "outputs": json.loads(request.outputs),
        "output_schemas": json.loads(request.output_schemas or "{}"),
        "parameters": json.loads(request.parameters), "status": request.status,
        "decided_by": request.decided_by, "reason": request.reason,
        "notebook_sha256": request.notebook_sha256,
        "created_at": request.created_at.isoformat() + "Z",
        "run": None if run is None else {
            # the error text is the notebook's to write, and can carry the owner's rows
            "status": run.status,
            "error": run.error if owner_side else error_category(run.status, run.error),
            "progress": {"cells_done": run.cells_done, "cells_total": run.cells_total},
            # the executed notebook shows the owner's data: it stays on the owner's side
            "id": run.id if owner_side else None,
        },
        "released": {p: {"sha256": s, "url": f"{base}/files/{p}"}
                     for p, s in json.loads(request.released).items()},
        "withheld": json.loads(request.withheld),
        "log_index": request.log_index,
    }
    if with_code:
        out["notebook"] = f"{base}/notebook"
    return out
