"""Queueing a run: a caller's request checked and inserted as a ``queued`` row of ``runs``.

The HTTP layer validates parameters (:func:`marketplace_ext.parameters.validate_parameters`),
calls :func:`queue_run` in its own transaction, commits and wakes the runner
(:meth:`marketplace_ext.runner.Runner.kick`).

Per-unit quota: a unit may have at most ``max_active_per_unit`` runs ``queued`` or ``running``
at once (remote runs of other units' products, the unit's own runs of its own products, and
model-to-data runs approved on its platform alike; a run without a unit counts against its
user). One more is refused with :class:`~.errors.QuotaExceeded` (429 ``quota_exceeded``, field
``unit``, ``Retry-After``) before anything is inserted, so nothing is charged or stored. The
service sets the quota from ``MarketplaceApp.max_active_runs_per_unit`` (:func:`configure`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .blobs import SHA256_RE
from .errors import InvalidField, QuotaExceeded
from .orm import Run, Unit

DATA_KINDS: tuple[str, ...] = ("platform", "upload")
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
ACTIVE_STATUSES: tuple[str, ...] = ("queued", "running")
#: Retry-After (seconds) of a refusal: about when a short run frees a slot
QUOTA_RETRY_AFTER = 30

_quota = {"max_active_per_unit": 0}  # 0: no limit; the service sets it (configure)


def configure(*, max_active_per_unit: int) -> None:
    """The service's per-unit quota of runs queued or running (0: no limit)."""
    if max_active_per_unit < 0:
        raise ValueError("max_active_per_unit must be 0 (no limit) or more")
    _quota["max_active_per_unit"] = max_active_per_unit


def check_unit_quota(session: Session, unit_id: int | None, user: str, limit: int) -> None:
    """Raise :class:`QuotaExceeded` if the unit (or, without one, the user) already has
    ``limit`` runs queued or running. Call it in the write transaction that inserts the run:
    on SQLite that transaction holds the write lock; on PostgreSQL the unit's row is locked
    here, so two concurrent requests of one unit cannot both take the last slot."""
    if limit <= 0:
        return
    if unit_id is not None:
        session.execute(select(Unit.id).where(Unit.id == unit_id).with_for_update())
        mine = Run.unit_id == unit_id
        whose = "your unit has"
    else:
        mine = (Run.unit_id.is_(None)) & (Run.user == user)
        whose = "you have"
    active = session.scalar(select(func.count()).select_from(Run)
                            .where(mine, Run.status.in_(ACTIVE_STATUSES)))
    if active >= limit:
        raise QuotaExceeded(f"{whose} {active} runs queued or running; the limit is {limit} per "
                            "unit: retry when one has finished", "unit",
                            retry_after=QUOTA_RETRY_AFTER)


@dataclass(frozen=True)
class RunRequest:
    """What a caller asks to run. ``parameters`` should come from :func:`validate_parameters`;
    an uploaded file is a blob (``data_sha256``) with the name it gets under ``inputs/``."""

    product_id: int
    version_id: int
    unit_id: int | None
    user: str
    mode: str
    parameters: dict
    timeout_seconds: int
    entitlement_id: int | None = None
    data_kind: str = "platform"
    data_sha256: str | None = None
    data_name: str | None = None


def _file_name_problem(name: object) -> str | None:
    if not isinstance(name, str) or not name:
        return "must be a non-empty file name"
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        return "must be a plain file name (no directories, not starting with '.')"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "must not contain control characters"
    if len(name.encode()) > 255:
        return "is longer than 255 bytes"
    return None


def queue_run(session: Session, request: RunRequest,
              max_active_per_unit: int | None = None) -> Run:
    """Insert ``request`` as a ``queued`` run in the caller's transaction (nothing is
    committed); the caller commits and then calls :meth:`Runner.kick`. The unit's quota
    (``max_active_per_unit``, default the service's) is checked first."""
    if request.data_kind not in DATA_KINDS:
        raise InvalidField(f"data must be one of {', '.join(DATA_KINDS)}", "data")
    if request.data_kind == "upload":
        if not isinstance(request.data_sha256, str) or not SHA256_RE.match(request.data_sha256):
            raise InvalidField("an uploaded file needs its sha256", "data.sha256")
        why = _file_name_problem(request.data_name)
        if why:
            raise InvalidField(f"the uploaded file's name {why}", "data.name")
    elif request.data_sha256 is not None or request.data_name is not None:
        raise InvalidField("only an upload carries a file", "data")
    if (not isinstance(request.timeout_seconds, int) or isinstance(request.timeout_seconds, bool)
            or not 1 <= request.timeout_seconds <= MAX_TIMEOUT_SECONDS):
        raise InvalidField(f"timeout_seconds must be an integer from 1 to {MAX_TIMEOUT_SECONDS}",
                           "timeout_seconds")
    if not isinstance(request.parameters, dict):
        raise InvalidField("parameters must be a JSON object", "parameters")
    try:
        parameters = json.dumps(request.parameters, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidField(f"parameters must be JSON values: {e}", "parameters") from e
    limit = _quota["max_active_per_unit"] if max_active_per_unit is None else max_active_per_unit
    check_unit_quota(session, request.unit_id, request.user, limit)
    run = Run(
        product_id=request.product_id, version_id=request.version_id, unit_id=request.unit_id,
        user=request.user, mode=request.mode, entitlement_id=request.entitlement_id,
        status="queued", parameters=parameters, data_kind=request.data_kind,
        data_sha256=request.data_sha256, data_name=request.data_name,
        timeout_seconds=request.timeout_seconds, cancel_requested=False, cells_done=0,
        cells_total=0, artifacts="{}",
    )
    session.add(run)
    session.flush()
    return run
