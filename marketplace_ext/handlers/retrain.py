"""Further training handlers: ``POST api/products/{p}/retrain`` queues a training run of a tool
on the caller's unit data; ``GET api/derived-models`` and ``api/derived-models/{id}`` show the
unit's derived models and their lineage (:mod:`marketplace_ext.retrain`). A derived model is
called with ``POST api/products/{p}/predict {"rows", "model": id}``."""

from __future__ import annotations

from tornado import web

from .. import retrain
from ..auth import SCOPE_SUBSCRIBE
from ..errors import PlatformUnavailable
from .base import APIHandler


class RetrainHandler(APIHandler):
    @web.authenticated
    async def post(self, product):
        market = self.market
        self.caller.require(SCOPE_SUBSCRIBE, "retraining a product")
        body = self.json_body()
        if self.caller.unit:
            # a training run on a platform that is down takes no points: 503 up front
            down = await self.in_io(market.data_platform.unit_down, self.caller.unit)
            if down:
                raise PlatformUnavailable(down, "unit")
        answer = await self.in_write(_submit, market, self.caller, product, body)
        market.runner.kick()
        self.write_json(answer, status=201)


def _submit(session, market, caller, product: str, body: dict) -> dict:
    """Blocking (the db executor, one write transaction): the training run queued."""
    derived, run = retrain.submit(session, caller, product, body, market.run_timeout,
                                  market.run_max_timeout)
    session.flush()
    return {**retrain.model_json(session, derived, market.service_prefix),
            "run_status": run.status}


def _models_json(session, caller, product: str | None, prefix: str) -> list[dict]:
    return [retrain.model_json(session, m, prefix)
            for m in retrain.list_models(session, caller, product)]


def _model_json(session, caller, model: str, prefix: str) -> dict:
    return retrain.model_json(session, retrain.get_model(session, caller, model), prefix)


class DerivedModelsHandler(APIHandler):
    @web.authenticated
    async def get(self):
        product = self.get_query_argument("product", None)
        self.write_json({"models": await self.in_db(_models_json, self.caller, product,
                                                    self.market.service_prefix)})


class DerivedModelHandler(APIHandler):
    @web.authenticated
    async def get(self, model):
        self.write_json(await self.in_db(_model_json, self.caller, model,
                                         self.market.service_prefix))


default_handlers = [
    (r"/api/products/(?P<product>[^/]+)/retrain", RetrainHandler),
    (r"/api/derived-models", DerivedModelsHandler),
    (r"/api/derived-models/(?P<model>[^/]+)", DerivedModelHandler),
]
