"""A finished project's model on the shelf, co-owned by its members.

A publisher of an approved member uploads the final model as a *tool* bundle
(``POST api/fl/projects/{id}/product``, multipart ``bundle`` as for any product). It is
refused (409 naming ``project``) unless the project has finished and is settled, and only one
product per project is accepted. The bundle goes through the usual publishing path and
operator review (:func:`marketplace_ext.publishing.publish_upload`); in the same transaction
the product's co-owners are set to the settlement's certified shares
(``points.set_product_shares``), so every sale pays the revenue after the fee to the members
in one multi-leg transfer (``purchase.place_order``). Certified as ``fl_model_product``.
"""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import certlog, points
from ..auth import Caller
from ..errors import Conflict, InvalidField
from ..orm import Product, Unit, Version, utcnow
from .common import FINISHED, iso, require_acting_member
from .orm import FLModelProduct, FLProject, FLSettlement


def check_publishable(session: Session, caller: Caller, project: FLProject) -> dict[str, int]:
    """The certified shares the model will be co-owned by; 409 naming ``project`` when the
    project has not finished, is not settled, no unit qualified, or has its product already."""
    require_acting_member(session, caller, project, "publishing a project's model")
    if project.state != FINISHED:
        raise Conflict(
            f"project {project.name!r} is {project.state}: only the model of a "
            "finished project is published",
            "project",
        )
    settlement = session.get(FLSettlement, project.id)
    if settlement is None:
        raise Conflict(
            f"project {project.name!r} is not settled: settle it first (POST "
            f"api/fl/projects/{project.id}/settlement), its shares own the model",
            "project",
        )
    shares = {u: bp for u, bp in json.loads(settlement.shares).items() if bp > 0}
    if not shares:
        raise Conflict(f"no unit of project {project.name!r} qualified for a share", "project")
    if session.get(FLModelProduct, project.id) is not None:
        raise Conflict(f"project {project.name!r} has published its model already", "project")
    return shares


def record_model_product(
    session: Session, caller: Caller, project: FLProject, version: Version, created: bool
) -> dict:
    """In the publishing transaction: the new tool product becomes the project's, co-owned
    by the certified shares. A product that existed before, or of another kind, is refused."""
    shares = check_publishable(session, caller, project)
    product = version.product
    if product.kind != "tool":
        raise InvalidField(
            f"the model of a project is published as a tool product, not {product.kind}", "kind"
        )
    if not created or len(product.versions) != 1:
        raise Conflict(
            f"product {product.name!r} exists already: a project's model is a new product", "name"
        )
    units = {u.slug: u for u in session.scalars(select(Unit).where(Unit.slug.in_(shares)))}
    points.set_product_shares(
        session, product, {units[u]: bp for u, bp in shares.items()}, f"fl_project:{project.id}"
    )
    row = FLModelProduct(
        project_id=project.id, product_id=product.id, published_by=caller.name, created_at=utcnow()
    )
    session.add(row)
    session.flush()
    row.log_index = certlog.append(
        session,
        "fl_model_product",
        caller.name,
        project.unit.slug,
        version.sha256,
        project=project.name,
        project_id=project.id,
        product=product.name,
        version=version.version,
        shares=shares,
    )
    session.flush()
    return {"project": project.id, "shares": shares}


def model_product_json(session: Session, project: FLProject) -> dict | None:
    row = session.get(FLModelProduct, project.id)
    if row is None:
        return None
    return {
        "product": row.product.name,
        "published_by": row.published_by,
        "log_index": row.log_index,
        "created_at": iso(row.created_at),
        "co_owners": co_owners(session, row.product),
    }


def co_owners(session: Session, product: Product) -> list[dict]:
    """A co-owned product's owners and shares (empty for a product of one unit)."""
    return [
        {"unit": s.unit.slug, "basis_points": s.basis_points}
        for s in points.product_shares(session, product)
    ]
