"""The economy of a federated project: the data products it is opened on, its reward pool,
the contribution measure and the split when it ends.

* **Data products.** A project may be opened on data products that offer the ``federated``
  sharing mode. Then a unit takes part (the initiator at opening, a partner when it joins) only
  if it owns one of them or holds a usable entitlement to one (``points.check(..., "federated")``),
  and the project is listed on those products' pages.
* **Pool.** The initiator's unit escrows points for the project (at opening, ``pool``, or later,
  ``POST .../pool``) in an escrow account of the double-entry ledger (transfer kind
  ``fl_pool_in``); a pool larger than the unit's balance is a 409 naming ``pool``.
* **Contribution measure**, chosen when the project is opened (``contribution_measure``,
  shown to every unit before it joins): ``weight`` (the default) is each partner's share of
  the *data weight* (the weights its certified updates declared), with no quality gate;
  ``loo_weight`` (opt-in) adds each partner's *leave-one-out effect* on the validation metric
  and gates the partners that make it worse, at a privacy price (:mod:`.loo`: members who
  hold the key can learn each unit's update). For a published round with at least three
  updates, members fetch the encrypted sum of every update but one unit's
  (``GET .../rounds/{n}/loo/{unit}``, added by the service without decrypting), decrypt it
  with the project key, evaluate that model on their own validation data, and post it as the
  metric ``loo.<unit>`` beside the full model's ``<metric>`` (``POST .../metrics``). A unit's
  effect ``delta`` is the median over the *other* members' evaluations of ``full - loo`` (its
  own evaluations of itself are ignored). A unit whose ``delta`` is below ``-tolerance`` (its
  updates make the model worse) is gated to a zero share; the others' shares are the mean of
  their data-weight share and their share of the positive deltas. Shares are basis points
  summing to 10 000 by largest remainder (:func:`points.split_amount`).
* **Split.** When the project has finished, a member settles it: the shares (computed, or
  submitted by the initiator's unit as an agreed split that must sum to 10 000, 400 naming
  ``shares`` otherwise) are certified (``fl_split``: measure, inputs, shares, amounts) and the
  pool is paid from the escrow in one multi-leg transfer less the 6 % fee (``fl_pool_split``),
  or back to the initiator's unit if no unit helped (``fl_pool_refund``).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from fractions import Fraction

from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import certlog, points
from ..auth import Caller
from ..errors import Conflict, Forbidden, InvalidField, MarketError, NotFound
from ..ids import json_int
from ..orm import Account, Product, Unit, utcnow
from .common import (
    APPROVED,
    CANCELLED,
    FAILED,
    FINISHED,
    INITIATOR,
    PUBLISHED,
    iso,
    require_acting_member,
    require_viewer,
)
from .orm import (
    FLMember,
    FLMetric,
    FLPool,
    FLProject,
    FLProjectProduct,
    FLRound,
    FLSettlement,
    FLUpdate,
)

MODE = "federated"
WHOLE = 10_000  # basis points
MAX_PRODUCTS = 20
MAX_POOL_POINTS = 1_000_000
DEFAULT_METRIC = "auc"
#: a unit whose leave-one-out effect is below -TOLERANCE is gated to a zero share
TOLERANCE = 0.002
WEIGHT, LOO = "weight", "loo_weight"
MEASURES = (WEIGHT, LOO)
MEASURE = LOO  # (the name certified splits used before the measure became a choice)
SCORE_SCALE = 10**12  # scores are exact fractions, scaled to integers for the split


# --- data products --------------------------------------------------------------------------


def parse_products(body: dict) -> tuple[str, ...]:
    raw = body.get("products", [])
    if raw is None:
        return ()
    if (
        not isinstance(raw, list)
        or len(raw) > MAX_PRODUCTS
        or not all(isinstance(p, str) and 0 < len(p) <= 64 for p in raw)
    ):
        raise InvalidField(
            f"products must be a list of at most {MAX_PRODUCTS} data product names", "products"
        )
    if len(set(raw)) != len(raw):
        raise InvalidField("products names a product twice", "products")
    return tuple(raw)


def parse_pool(body: dict, field: str = "pool") -> int:
    """Whole points (0 = no pool) as centipoints; 400 naming ``field``."""
    raw = json_int(body.get(field, 0))
    if raw is None:
        raw = 0
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_POOL_POINTS:
        raise InvalidField(
            f"{field} must be a whole number of points from 0 to {MAX_POOL_POINTS}", field
        )
    return raw * points.CENTS


def parse_measure(body: dict) -> str:
    """The project's contribution measure: ``weight`` (default) or the opt-in ``loo_weight``;
    400 naming ``contribution_measure`` otherwise."""
    raw = body.get("contribution_measure", WEIGHT)
    if raw not in MEASURES:
        raise InvalidField(
            f"contribution_measure must be one of {', '.join(MEASURES)} "
            "(loo_weight lets members learn each unit's update: opt in only "
            "if the units accept that)",
            "contribution_measure",
        )
    return raw


def lock_project(session: Session, project: FLProject) -> None:
    """Serialise the writes that end a project's economy (funding, settling, cancelling): the
    project's row ``FOR UPDATE`` on PostgreSQL (SQLite's write transaction is one lock
    already), then its state read again."""
    session.execute(select(FLProject.id).where(FLProject.id == project.id).with_for_update())
    session.refresh(project)


def _usable(session: Session, unit: Unit, product: Product) -> bool:
    if product.unit_id == unit.id:
        return True
    try:
        points.check(session, unit, product, MODE)
    except MarketError:
        return False
    return True


def link_products(
    session: Session, project: FLProject, names: tuple[str, ...], unit: Unit
) -> list[Product]:
    """Open ``project`` on the named data products: each must be on the shelf and offer
    ``federated``, and the initiator's ``unit`` must own or be entitled to one of them."""
    found = []
    for name in names:
        product = session.scalar(select(Product).where(Product.name == name))
        version = product.current_version if product else None
        if product is None or version is None or version.state != "on_shelf":
            raise InvalidField(f"products: no product {name!r} on the shelf", "products")
        if product.kind != "data" or MODE not in points.offered_modes(product):
            raise InvalidField(
                f"products: {name!r} is not a data product offering federated", "products"
            )
        found.append(product)
    if found and not any(_usable(session, unit, p) for p in found):
        raise points.NoEntitlement(
            f"unit {unit.slug!r} neither owns nor holds a federated plan of any of "
            f"{', '.join(names)}",
            "products",
        )
    for product in found:
        session.add(FLProjectProduct(project_id=project.id, product_id=product.id))
    session.flush()
    return found


def project_products(session: Session, project: FLProject) -> list[Product]:
    return list(
        session.scalars(
            select(Product)
            .join(FLProjectProduct, FLProjectProduct.product_id == Product.id)
            .where(FLProjectProduct.project_id == project.id)
            .order_by(FLProjectProduct.id)
        )
    )


def require_data_access(session: Session, project: FLProject, unit: Unit) -> None:
    """403 ``no_entitlement`` naming ``product`` unless ``unit`` owns one of the project's
    data products or holds a usable ``federated`` plan of one (no products: anyone)."""
    products = project_products(session, project)
    if products and not any(_usable(session, unit, p) for p in products):
        raise points.NoEntitlement(
            f"taking part in project {project.name!r} needs a federated plan of "
            f"{' or '.join(p.name for p in products)} (or owning one): order one first",
            "product",
        )


def projects_on_product(session: Session, product: Product) -> list[dict]:
    """The public summary of the projects opened on ``product`` (its page shows them)."""
    rows = session.scalars(
        select(FLProject)
        .join(FLProjectProduct, FLProjectProduct.project_id == FLProject.id)
        .where(FLProjectProduct.product_id == product.id)
        .order_by(FLProject.id.desc())
    )
    return [
        {
            "id": p.id,
            "name": p.name,
            "title": p.title,
            "unit": p.unit.slug,
            "state": p.state,
            "pool": points.format_points(pool_of(session, p)[1]),
        }
        for p in rows
    ]


def federated_shelf(session: Session) -> list[dict]:
    """The shelf's federated section: every project opened on data products, newest first."""
    out = []
    for project in session.scalars(
        select(FLProject)
        .where(FLProject.id.in_(select(FLProjectProduct.project_id)))
        .order_by(FLProject.id.desc())
        .limit(50)
    ):
        out.append(
            {
                "id": project.id,
                "name": project.name,
                "title": project.title,
                "unit": project.unit.slug,
                "state": project.state,
                "products": [p.name for p in project_products(session, project)],
                "pool": points.format_points(pool_of(session, project)[1]),
            }
        )
    return out


# --- the pool -------------------------------------------------------------------------------


def pool_of(session: Session, project: FLProject) -> tuple[FLPool | None, int]:
    """(the pool row, centipoints it holds now)."""
    pool = session.get(FLPool, project.id)
    if pool is None:
        return None, 0
    return pool, session.get(Account, pool.account_id).balance


def fund_pool(
    session: Session,
    caller: Caller,
    project: FLProject,
    amount: int,
    initiator_unit: Unit | None = None,
) -> FLPool:
    """Move ``amount`` centipoints from the initiator's unit into the project's pool (a
    publisher of that unit; before the project is settled). 409 naming ``pool`` when the unit
    has fewer points; nothing is written then (the caller rolls back)."""
    if initiator_unit is None:
        member = require_acting_member(session, caller, project, "funding a project's pool")
        if member.role != INITIATOR:
            raise Forbidden(
                f"only the initiator's unit ({project.unit.slug}) funds the pool "
                f"of project {project.name!r}",
                "unit",
            )
        initiator_unit = member.unit
    if amount <= 0:
        raise InvalidField("pool must be at least 1 point", "pool")
    lock_project(session, project)
    if project.state in (CANCELLED, FAILED):
        raise Conflict(
            f"project {project.name!r} is {project.state}; its pool went back", "project"
        )
    if current_settlement(session, project) is not None:
        raise Conflict(f"project {project.name!r} is settled; its pool is paid", "project")
    pool = session.get(FLPool, project.id)
    if pool is None:
        account = points.open_escrow_account(session)
        pool = FLPool(project_id=project.id, account_id=account.id, funded=0, created_at=utcnow())
        session.add(pool)
        session.flush()
    escrow = session.get(Account, pool.account_id)
    transfer = points.escrow_deposit(
        session,
        initiator_unit,
        escrow,
        amount,
        caller.name,
        f"federated project {project.name}: into the pool",
        field="pool",
        kind="fl_pool_in",
    )
    pool.funded += amount
    certlog.append(
        session,
        "fl_pool",
        caller.name,
        initiator_unit.slug,
        f"fl_project:{project.id}",
        project=project.name,
        project_id=project.id,
        amount=points.format_points(amount),
        pool=points.format_points(pool.funded),
        transfer=transfer.id,
    )
    session.flush()
    return pool


# --- the contribution measure ---------------------------------------------------------------


@dataclass(frozen=True)
class Measure:
    """The inputs of the measure and the shares it gives (basis points; empty: nobody helped)."""

    weights: dict[str, int]
    deltas: dict[str, float | None]
    evaluations: dict[str, int]
    shares: dict[str, int]
    name: str = LOO

    def inputs(self) -> dict:
        return {
            "measure": self.name,
            "tolerance": TOLERANCE if self.name == LOO else None,
            "units": {
                u: {
                    "weight": self.weights[u],
                    "delta": self.deltas.get(u),
                    "evaluations": self.evaluations.get(u, 0),
                    "gated": _gated(self.deltas.get(u)),
                }
                for u in sorted(self.weights)
            },
        }


def _gated(delta: float | None) -> bool:
    return delta is not None and delta < -TOLERANCE


def loo_deltas(
    evaluations: list[tuple[int, str, dict]], units: list[str], metric: str = DEFAULT_METRIC
) -> tuple[dict[str, float | None], dict[str, int]]:
    """Each unit's leave-one-out effect from members' evaluations ``(round, evaluator,
    metrics)``: the median over the other evaluators' ``metrics[metric] -
    metrics["loo.<unit>"]`` (None when nobody evaluated it), and how many there were."""
    found: dict[str, list[float]] = {u: [] for u in units}
    for _round, evaluator, metrics in evaluations:
        full = metrics.get(metric)
        if not isinstance(full, int | float):
            continue
        for unit in units:
            loo = metrics.get(f"loo.{unit}")
            if unit != evaluator and isinstance(loo, int | float):
                found[unit].append(float(full) - float(loo))
    return (
        {u: statistics.median(v) if v else None for u, v in found.items()},
        {u: len(v) for u, v in found.items()},
    )


def shares_from(weights: dict[str, int], deltas: dict[str, float | None]) -> dict[str, int]:
    """Basis points (summing to 10 000) from data weights and leave-one-out effects: a unit
    below ``-TOLERANCE`` gets nothing; the others get the mean of their data-weight share and
    their share of the positive effects (the weight share alone when no effect is positive).
    Empty when no unit qualifies."""
    kept = {u: w for u, w in weights.items() if w > 0 and not _gated(deltas.get(u))}
    if not kept:
        return {}
    total_weight = sum(kept.values())
    positive = {u: Fraction(max(deltas.get(u) or 0.0, 0.0)) for u in kept}
    total_positive = sum(positive.values())
    scores = {}
    for unit, weight in kept.items():
        score = Fraction(weight, total_weight)
        if total_positive > 0:
            score = (score + positive[unit] / total_positive) / 2
        scores[unit] = int(score * SCORE_SCALE)
    if sum(scores.values()) <= 0:
        return {}
    shares = points.split_amount(WHOLE, scores)
    return {u: shares.get(u, 0) for u in sorted(weights)}


def measure(session: Session, project: FLProject, metric: str = DEFAULT_METRIC) -> Measure:
    """The contribution measure of ``project`` from what the service holds: the weights of
    the updates in published rounds and, if the project opted in to ``loo_weight``, the
    members' leave-one-out evaluations (otherwise the data weights alone)."""
    weights: dict[str, int] = {}
    rows = session.execute(
        select(FLMember, FLUpdate.weight)
        .join(FLUpdate, FLUpdate.member_id == FLMember.id)
        .join(FLRound, FLRound.id == FLUpdate.round_id)
        .where(FLRound.project_id == project.id, FLRound.state == PUBLISHED)
    ).all()
    for member, weight in rows:
        weights[member.unit.slug] = weights.get(member.unit.slug, 0) + int(weight)
    name = project.contribution_measure or WEIGHT
    evaluations = (
        [
            (m.round, m.member.unit.slug, json.loads(m.metrics))
            for m in session.scalars(
                select(FLMetric).where(FLMetric.project_id == project.id).order_by(FLMetric.id)
            )
        ]
        if name == LOO
        else []
    )
    deltas, counts = loo_deltas(evaluations, sorted(weights), metric)
    return Measure(weights, deltas, counts, shares_from(weights, deltas), name)


# --- settling -------------------------------------------------------------------------------


def parse_shares(raw: object, units: list[str]) -> dict[str, int]:
    """A submitted split: ``{unit: basis points}`` over the units that contributed, integers
    from 0 to 10 000 summing to exactly 10 000; 400 naming ``shares`` otherwise."""
    if not isinstance(raw, dict) or not raw:
        raise InvalidField("shares must be an object {unit: basis points}", "shares")
    unknown = sorted(set(raw) - set(units))
    if unknown:
        raise InvalidField(
            f"shares names unit(s) {unknown[:5]} that sent no update to a published round", "shares"
        )
    clean = {}
    for unit, value in raw.items():
        value = json_int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= WHOLE:
            raise InvalidField(
                f"shares of {unit!r} must be whole basis points from 0 to {WHOLE}", "shares"
            )
        clean[unit] = value
    if sum(clean.values()) != WHOLE:
        raise InvalidField(
            f"shares sum to {sum(clean.values())} basis points; they must sum to exactly {WHOLE}",
            "shares",
        )
    return {u: clean.get(u, 0) for u in sorted(units)}


def settle(
    session: Session, caller: Caller, project: FLProject, rules: points.EconomyRules, body: dict
) -> FLSettlement:
    """End a finished project's economy: certify the measure and the split, and pay the pool
    (one multi-leg transfer less the fee), or give it back when no unit qualifies. Any
    approved member may settle with the computed measure; only the initiator's unit may
    submit ``shares``. Needs a write transaction; the caller commits."""
    member = require_acting_member(session, caller, project, "settling a federated project")
    if set(body) - {"shares"}:
        raise InvalidField(
            f"unknown field(s) {sorted(set(body) - {'shares'})}", sorted(set(body) - {"shares"})[0]
        )
    lock_project(session, project)
    if project.state != FINISHED:
        raise Conflict(
            f"project {project.name!r} is {project.state}; it is settled once its "
            "last round is published",
            "project",
        )
    if current_settlement(session, project) is not None:
        raise Conflict(f"project {project.name!r} is settled already", "project")
    computed = measure(session, project)
    if "shares" in body:
        if member.role != INITIATOR:
            raise Forbidden(
                f"only the initiator's unit ({project.unit.slug}) submits a split", "shares"
            )
        shares, how = parse_shares(body["shares"], sorted(computed.weights)), "submitted"
    else:
        shares, how = computed.shares, computed.name
    pool, held = pool_of(session, project)
    transfer, fee, paid = None, 0, {}
    units = {u.slug: u for u in session.scalars(select(Unit).where(Unit.slug.in_(shares)))}
    if held > 0 and pool is not None:
        escrow = session.get(Account, pool.account_id)
        if shares and sum(shares.values()) == WHOLE:
            transfer, fee, paid = points.escrow_split(
                session,
                escrow,
                {units[u]: bp for u, bp in shares.items()},
                rules,
                caller.name,
                f"federated project {project.name}: the pool split",
            )
        else:
            transfer = points.escrow_refund(
                session,
                escrow,
                project.unit,
                caller.name,
                f"federated project {project.name}: no unit qualified; the pool goes back",
                kind="fl_pool_refund",
            )
            paid = {project.unit.slug: held}
    settlement = FLSettlement(
        project_id=project.id,
        measure=how,
        inputs=json.dumps(computed.inputs(), sort_keys=True),
        shares=json.dumps(shares, sort_keys=True),
        paid=json.dumps(paid, sort_keys=True),
        fee=fee,
        transfer_id=transfer.id if transfer else None,
        decided_by=caller.name,
        created_at=utcnow(),
    )
    session.add(settlement)
    session.flush()
    settlement.log_index = certlog.append(
        session,
        "fl_split",
        caller.name,
        project.unit.slug,
        f"fl_project:{project.id}",
        project=project.name,
        project_id=project.id,
        measure=how,
        inputs=computed.inputs(),
        computed_shares=computed.shares,
        shares=shares,
        pool=points.format_points(held),
        fee=points.format_points(fee),
        paid={u: points.format_points(a) for u, a in paid.items()},
        transfer=transfer.id if transfer else None,
    )
    session.flush()
    return settlement


def current_settlement(session: Session, project: FLProject) -> FLSettlement | None:
    """The settlement as committed now (not the session's cached one: a concurrent settle or
    cancel may have just written it)."""
    return session.scalar(
        select(FLSettlement)
        .where(FLSettlement.project_id == project.id)
        .execution_options(populate_existing=True)
    )


def get_settlement(session: Session, project: FLProject) -> FLSettlement:
    found = session.get(FLSettlement, project.id)
    if found is None:
        raise NotFound(f"project {project.name!r} is not settled yet", "project")
    return found


def settlement_json(settlement: FLSettlement | None) -> dict | None:
    if settlement is None:
        return None
    return {
        "measure": settlement.measure,
        "inputs": json.loads(settlement.inputs),
        "shares": json.loads(settlement.shares),
        "paid": {u: points.format_points(a) for u, a in json.loads(settlement.paid).items()},
        "fee": points.format_points(settlement.fee),
        "transfer": settlement.transfer_id,
        "decided_by": settlement.decided_by,
        "log_index": settlement.log_index,
        "created_at": iso(settlement.created_at),
    }


def economy_json(session: Session, caller: Caller, project: FLProject) -> dict:
    """The pool, the contribution estimate so far and the split (members, the initiator's
    unit and operators)."""
    require_viewer(session, caller, project, "reading a project's contributions")
    pool, held = pool_of(session, project)
    current = measure(session, project)
    return {
        "project": project.id,
        "state": project.state,
        "contribution_measure": project.contribution_measure,
        "products": [p.name for p in project_products(session, project)],
        "pool": {
            "funded": points.format_points(pool.funded if pool else 0),
            "held": points.format_points(held),
        },
        "estimate": {**current.inputs(), "shares": current.shares},
        "settlement": settlement_json(session.get(FLSettlement, project.id)),
        "members": [m.unit.slug for m in project.members if m.status == APPROVED],
    }
