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
    def post(self, product):
        market = self.market
        self.caller.require(SCOPE_SUBSCRIBE, "retraining a product")
        body = self.json_body()
        if self.caller.unit:
            # a training run on a platform that is down takes no points: 503 up front
            down = market.data_platform.unit_down(self.caller.unit)
            if down:
                raise PlatformUnavailable(down, "unit")
        derived, run = retrain.submit(self.db, self.caller, product, body, market.run_timeout,
                                      market.run_max_timeout)
        self.db.commit()
        market.runner.kick()
        prefix = market.service_prefix
        self.write_json({**retrain.model_json(self.db, derived, prefix),
                         "run_status": run.status}, status=201)


class DerivedModelsHandler(APIHandler):
    @web.authenticated
    def get(self):
        product = self.get_query_argument("product", None)
        prefix = self.market.service_prefix
        models = retrain.list_models(self.db, self.caller, product)
        self.write_json({"models": [retrain.model_json(self.db, m, prefix) for m in models]})


class DerivedModelHandler(APIHandler):
    @web.authenticated
    def get(self, model):
        found = retrain.get_model(self.db, self.caller, model)
        self.write_json(retrain.model_json(self.db, found, self.market.service_prefix))


default_handlers = [
    (r"/api/products/(?P<product>[^/]+)/retrain", RetrainHandler),
    (r"/api/derived-models", DerivedModelsHandler),
    (r"/api/derived-models/(?P<model>[^/]+)", DerivedModelHandler),
]
