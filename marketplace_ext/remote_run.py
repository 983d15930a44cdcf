"""The remote-run sharing mode: run an application or tool product as a papermill job on the
caller's own unit data (its platform's ``SPARK_REMOTE``).

The entitlement gate is passed, the per-use order consumed and the run queued in one
transaction; when the run ends, a failed or cancelled run refunds its per-use order and every
run is certified in the log with digests of its inputs and outputs (:func:`finish_run`, the
runner's ``on_finished``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import certlog, points, sharing
from .auth import SCOPE_PUBLISH, Caller
from .errors import Forbidden, InvalidField, MarketError, NotFound
from .ids import parse_id
from .orm import Entitlement, Order, Product, Run, Unit, Version, utcnow
from .runner import RunRequest, queue_run, validate_parameters

log = logging.getLogger(__name__)

UPLOAD_SUFFIXES = (".csv", ".parquet")


def check_upload(name: object, data: bytes, max_bytes: int) -> str:
    """An uploaded data file must be a CSV or Parquet file within the size limit; returns a
    safe file name. The notebook gets its path as ``input_path``."""
    if not isinstance(name, str) or not name:
        raise InvalidField("the uploaded file needs a name", "data")
    base = re.sub(r"[^A-Za-z0-9._-]", "_", name.rsplit("/", 1)[-1].rsplit("\\", 1)[-1])
    if not base.lower().endswith(UPLOAD_SUFFIXES) or base.startswith("."):
        raise InvalidField("the uploaded file must be .csv or .parquet", "data")
    if len(data) > max_bytes:
        raise InvalidField(f"the uploaded file is {len(data)} bytes; the limit is {max_bytes}",
                           "data")
    if base.lower().endswith(".parquet"):
        if len(data) < 12 or data[:4] != b"PAR1" or data[-4:] != b"PAR1":
            raise InvalidField("the uploaded file is not a Parquet file", "data")
        return base
    try:
        text = data.decode("utf-8")
        rows = list(csv.reader(io.StringIO(text[:65536])))
    except (UnicodeDecodeError, csv.Error) as e:
        raise InvalidField(f"the uploaded CSV is malformed: {e}", "data") from e
    if not rows or len(rows[0]) < 1 or not any(cell.strip() for cell in rows[0]):
        raise InvalidField("the uploaded CSV has no header row", "data")
    width = len(rows[0])
    bad = next((i for i, row in enumerate(rows[1:-1], start=2) if len(row) != width), None)
    if bad is not None:
        raise InvalidField(f"the uploaded CSV is malformed: line {bad} has "
                           f"{len(rows[bad - 1])} fields, the header {width}", "data")
    return base


def submit_run(session: Session, caller: Caller, body: dict, default_timeout: int,
               max_timeout: int, upload: tuple[str, str] | None = None) -> Run:
    """Check, charge and queue a remote run; the caller commits and kicks the runner.

    ``upload`` is (blob sha256, file name) of a data file checked by :func:`check_upload`;
    without it the run reads the caller's unit platform."""
    grant = sharing.authorize_use(session, caller, body.get("product"), "remote_run",
                                  version=body.get("version"))
    if upload is None and body.get("data", "platform") != "platform":
        raise InvalidField("data must be 'platform' (your unit's data platform), or upload a "
                           "file as multipart field 'data'", "data")
    timeout = body.get("timeout_seconds", default_timeout)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= max_timeout:
        raise InvalidField(f"timeout_seconds must be an integer from 1 to {max_timeout}",
                           "timeout_seconds")
    version = session.get(Version, grant.version_id)
    parameters = validate_parameters(json.loads(version.parameters), body.get("parameters", {}))
    run = queue_run(session, RunRequest(
        product_id=grant.product_id, version_id=grant.version_id, unit_id=grant.unit_id,
        user=caller.name, mode="remote_run", parameters=parameters, timeout_seconds=timeout,
        entitlement_id=grant.entitlement_id,
        data_kind="upload" if upload else "platform",
        data_sha256=upload[0] if upload else None, data_name=upload[1] if upload else None,
    ))
    sharing.consume_use(session, grant)  # certified when the run ends (finish_run)
    return run


def bundle_for(blobs):
    def bundle(session: Session, run: Run) -> tuple[bytes, str, list[str]]:
        version = session.get(Version, run.version_id)
        manifest = json.loads(version.manifest)
        outputs = [o["path"] for o in manifest.get("outputs", [])]
        return blobs.get(version.sha256), manifest.get("notebook", "main.ipynb"), outputs
    return bundle


def env_for(platform):
    def env(session: Session, run: Run) -> dict[str, str]:
        unit = session.get(Unit, run.unit_id) if run.unit_id else None
        if unit is None:
            return {}
        return {"SPARK_REMOTE": platform.spark_remote_for(unit.slug),
                "UNIT_DATABASE": platform.database_for(unit.slug)}
    return env


def finish_run(session: Session, run: Run) -> None:
    """Refund a per-use order of a run that did not succeed; certify every run."""
    product = session.get(Product, run.product_id)
    version = session.get(Version, run.version_id)
    unit = session.get(Unit, run.unit_id) if run.unit_id else None
    refunded = run.status in ("failed", "cancelled") and points.refund_use(
        # the reason is certified and shown in the ledger: the status only, never the run's
        # error text (which may quote the data); the run itself keeps the error for its unit
        session, run.entitlement_id, "runner", f"run {run.id} {run.status}")
    run.log_index = certlog.append(
        session, "run", run.user, unit.slug if unit else None,
        run.output_sha256 or "none", run=run.id, product=product.name,
        version=version.version, bundle_sha256=version.sha256, status=run.status,
        parameters_sha256=hashlib.sha256(run.parameters.encode()).hexdigest(),
        input_sha256=run.data_sha256, output_sha256=run.output_sha256,
        html_sha256=run.html_sha256, artifacts=json.loads(run.artifacts or "{}"),
        refunded=refunded,
    )


class OutputsWithheld(MarketError):
    """A refunded run's outputs are not delivered: it cost nothing, so it delivers nothing."""

    status = 410
    code = "withheld"


def outputs_withheld(session: Session, run: Run) -> bool:
    """Whether the run's per-use order was refunded (the run failed, timed out or was
    cancelled, or an operator refunded the order): then its partial outputs are withheld."""
    if run.entitlement_id is None:
        return False
    entitlement = session.get(Entitlement, run.entitlement_id)
    order = session.get(Order, entitlement.order_id) if entitlement else None
    return order is not None and order.status == "refunded"


def _debugging_owner(session: Session, caller: Caller, run: Run, debug_days: int) -> bool:
    """A publisher of the product's unit, within ``debug_days`` of a refunded run's end."""
    if debug_days <= 0 or SCOPE_PUBLISH not in caller.scopes or caller.unit is None:
        return False
    product = session.get(Product, run.product_id)
    if product.unit.slug != caller.unit or not outputs_withheld(session, run):
        return False
    ended = run.finished_at or run.created_at
    return utcnow() - ended <= timedelta(days=debug_days)


def get_run(session: Session, caller: Caller, run_id: str, debug_days: int = 0) -> Run:
    """A run its user, its unit or an operator may see; a refunded run also to the product's
    publishers for ``debug_days`` after it ended (to debug their product on it)."""
    run = session.get(Run, parse_id(run_id, "run", "run"))
    if run is None:
        raise NotFound(f"no run {run_id!r}", "run")
    unit = session.get(Unit, run.unit_id) if run.unit_id else None
    # a model-to-data run is the owner's: its notebook and outputs show the owner's data, and
    # its demander sees only what api/m2d releases
    own = run.user == caller.name and run.mode != "m2d"
    if not (caller.is_operator or own or (unit is not None and unit.slug == caller.unit)
            or _debugging_owner(session, caller, run, debug_days)):
        raise NotFound(f"no run {run_id!r}", "run")  # other units' runs do not exist for you
    return run


def check_outputs_readable(session: Session, caller: Caller, run: Run, debug_days: int) -> None:
    """Raise :class:`OutputsWithheld` unless ``caller`` may read the run's outputs: a refunded
    run's outputs go to nobody but the product's publishers, for ``debug_days``."""
    if outputs_withheld(session, run) and not _debugging_owner(session, caller, run,
                                                                debug_days):
        raise OutputsWithheld(f"run {run.id} was refunded ({run.status}): its outputs are "
                              "withheld", "run")


def run_json(session: Session, run: Run, prefix: str, caller: Caller | None = None,
             debug_days: int = 0) -> dict:
    """The run as the API shows it; a refunded run shows no outputs to ``caller`` unless the
    caller may still read them (:func:`check_outputs_readable`)."""
    product = session.get(Product, run.product_id)
    version = session.get(Version, run.version_id)
    artifacts = json.loads(run.artifacts or "{}")
    withheld = outputs_withheld(session, run)
    if withheld and not (caller is not None
                         and _debugging_owner(session, caller, run, debug_days)):
        artifacts, html = {}, None
    else:
        html = run.html_sha256
    base = f"{prefix}api/runs/{run.id}"
    return {
        "id": run.id, "product": product.name, "version": version.version,
        "status": run.status, "user": run.user, "mode": run.mode,
        "parameters": json.loads(run.parameters or "{}"),
        "progress": {"cells_done": run.cells_done, "cells_total": run.cells_total},
        "error": run.error, "timeout_seconds": run.timeout_seconds,
        "created_at": run.created_at.isoformat() + "Z",
        "started_at": run.started_at.isoformat() + "Z" if run.started_at else None,
        "finished_at": run.finished_at.isoformat() + "Z" if run.finished_at else None,
        "output_html": f"{base}/output.html" if html else None,
        "outputs_withheld": withheld,
        "artifacts": {name: {"sha256": sha, "url": f"{base}/artifacts/{name}"}
                      for name, sha in artifacts.items()},
        "log_index": run.log_index,
    }


RUN_LIST_SCOPES = ("mine", "unit")
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def list_runs(session: Session, caller: Caller, scope: str, status: str | None, limit: int,
              offset: int) -> tuple[list[Run], int]:
    """The caller's own runs (``scope="mine"``) or every run of the caller's unit (``"unit"``),
    newest first, paged; model-to-data runs belong to the data owner and are listed under
    ``api/m2d``. Returns (page, total)."""
    if scope not in RUN_LIST_SCOPES:
        raise InvalidField(f"scope must be one of {', '.join(RUN_LIST_SCOPES)}", "scope")
    if status is not None and status not in RUN_STATUSES:
        raise InvalidField(f"status must be one of {', '.join(RUN_STATUSES)}", "status")
    query = select(Run).where(Run.mode != "m2d")
    if scope == "mine":
        query = query.where(Run.user == caller.name)
    else:
        if caller.unit is None:
            raise Forbidden(f"{caller.name} is not a member of any unit; ask an operator",
                            "unit")
        unit_id = session.scalar(select(Unit.id).where(Unit.slug == caller.unit))
        query = query.where(Run.unit_id == unit_id)
    if status is not None:
        query = query.where(Run.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    page = session.scalars(query.order_by(Run.id.desc()).limit(limit).offset(offset)).all()
    return list(page), total
