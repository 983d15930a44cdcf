"""Handlers of a federated project's economy under ``api/fl/projects/{id}/``: the pool, the
contribution estimate, the settlement (measure, split, payout), cancelling (the pool goes
back, :mod:`~marketplace_ext.federated.ending`), leave-one-out aggregates and the co-owned
model product. The rules are in :mod:`marketplace_ext.federated.economy`,
:mod:`~marketplace_ext.federated.loo` and :mod:`~marketplace_ext.federated.coowned`; every
database step runs in the db executor, the encrypted sums in a worker thread."""

from __future__ import annotations

from tornado import web

from ..auth import SCOPE_PUBLISH
from ..errors import InvalidField, NotFound
from ..federated import coowned, economy, ending, loo
from ..federated.common import get_project, parse_query_int, reject_unknown, require_viewer
from ..publishing import publish_upload
from .base import MULTIPART_ENVELOPE, APIHandler


def _economy(session, caller, project: str) -> dict:
    return economy.economy_json(session, caller, get_project(session, project))


def _fund(session, caller, project: str, amount: int) -> dict:
    found = get_project(session, project)
    economy.fund_pool(session, caller, found, amount)
    return economy.economy_json(session, caller, found)


def _settle(session, caller, project: str, rules, body: dict) -> dict:
    found = get_project(session, project)
    return economy.settlement_json(economy.settle(session, caller, found, rules, body))


def _settlement(session, caller, project: str) -> dict:
    found = get_project(session, project)
    require_viewer(session, caller, found, "reading a project's settlement")
    return economy.settlement_json(economy.get_settlement(session, found))


class PoolHandler(APIHandler):
    @web.authenticated
    async def post(self, project):
        body = self.json_body()
        reject_unknown(body, {"amount"})
        amount = economy.parse_pool(body, "amount")
        if amount <= 0:
            raise InvalidField("amount must be at least 1 point", "amount")
        self.write_json(await self.in_write(_fund, self.caller, project, amount), status=201)


def _cancel(session, caller, project: str, reason: str | None) -> tuple[dict, bool]:
    settlement, made = ending.cancel(session, caller, get_project(session, project), reason)
    return ending.ending_json(settlement), made


class CancelHandler(APIHandler):
    """Cancel an enrolling or running project (the initiator's unit, operators): its pool goes
    back to the initiator's unit, once; cancelling again returns the same record."""

    @web.authenticated
    async def post(self, project):
        body = self.json_body() if self.request.body else {}
        reason = ending.parse_reason(body)
        answer, _made = await self.in_write(_cancel, self.caller, project, reason)
        self.write_json(answer)


class ContributionsHandler(APIHandler):
    @web.authenticated
    async def get(self, project):
        self.write_json(await self.in_db(_economy, self.caller, project))


class SettlementHandler(APIHandler):
    @web.authenticated
    async def get(self, project):
        self.write_json(await self.in_db(_settlement, self.caller, project))

    @web.authenticated
    async def post(self, project):
        body = self.json_body() if self.request.body else {}
        answer = await self.in_write(_settle, self.caller, project, self.market.economy, body)
        self.write_json(answer, status=201)


class LeaveOneOutHandler(APIHandler):
    @web.authenticated
    async def get(self, project, number, unit):
        number = parse_query_int(number, "round", 1, 1000)
        job = await self.in_db(lambda s: loo.loo_job(s, self.caller, get_project(s, project),
                                                     number, unit))
        data = await self.in_io(loo.loo_sum, job, self.market.blobs)
        self.set_attachment(f"fl-project-{project}-round-{number}-without-{unit}.bin")
        self.set_header("X-FL-Parties", str(job.parties))
        self.set_header("X-FL-Total-Weight", str(job.total_weight))
        self.finish(data)


class ModelProductHandler(APIHandler):
    """The finished, settled project's model as a co-owned tool product: multipart ``bundle``
    and ``accept_terms`` as ``POST api/products``."""

    def max_body_bytes(self) -> int:
        return self.market.bundle_limits.max_total_bytes + MULTIPART_ENVELOPE

    def check_before_body(self) -> None:
        self.caller.require(SCOPE_PUBLISH, "publishing a project's model")

    @web.authenticated
    async def get(self, project):
        self.write_json(await self.in_db(_model_product, self.caller, project))

    @web.authenticated
    async def post(self, project):
        caller = self.caller
        # refused before the bundle is unpacked (and again in the publishing transaction)
        await self.in_db(lambda s: coowned.check_publishable(s, caller, get_project(s, project)))
        data, accept = self.bundle_upload()

        def within(session, version, created):
            return coowned.record_model_product(session, caller, get_project(session, project),
                                                version, created)

        result = await publish_upload(self.market, caller, data, accept, within)
        self.write_json(result, status=201)


def _model_product(session, caller, project: str) -> dict:
    found = get_project(session, project)
    require_viewer(session, caller, found, "reading a project's model product")
    answer = coowned.model_product_json(session, found)
    if answer is None:
        raise NotFound(f"project {found.name!r} has published no model", "project")
    return answer


_P = r"/api/fl/projects/(?P<project>[^/]+)"

default_handlers = [
    (_P + r"/pool", PoolHandler),
    (_P + r"/contributions", ContributionsHandler),
    (_P + r"/cancel", CancelHandler),
    (_P + r"/settlement", SettlementHandler),
    (_P + r"/rounds/(?P<number>[^/]+)/loo/(?P<unit>[^/]+)", LeaveOneOutHandler),
    (_P + r"/product", ModelProductHandler),
]
