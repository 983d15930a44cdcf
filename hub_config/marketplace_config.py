"""Configuration of the marketplace service (``MarketplaceApp``); loaded by the managed service.

Defaults suit the embedded mode. Set ``MARKET_DB_URL`` (e.g.
``postgresql+psycopg://market@db.example/market``) to move to PostgreSQL.
"""

import os

c = get_config()  # noqa: F821 - provided by traitlets

c.MarketplaceApp.log_level = os.environ.get("MARKET_LOG_LEVEL", "INFO")
c.MarketplaceApp.reconcile_interval = float(os.environ.get("MARKET_RECONCILE_INTERVAL", "300"))
if os.environ.get("MARKET_INITIAL_GRANT"):
    c.MarketplaceApp.initial_grant_points = int(os.environ["MARKET_INITIAL_GRANT"])
if os.environ.get("MARKET_LOG_WITNESSES"):
    # {"name": "vkey", ...} as JSON; see `market witness --init`
    import json

    c.MarketplaceApp.log_witnesses = json.loads(os.environ["MARKET_LOG_WITNESSES"])
if os.environ.get("MARKET_LOG_QUORUM"):
    c.MarketplaceApp.log_quorum = int(os.environ["MARKET_LOG_QUORUM"])
if os.environ.get("MARKET_SPARK_ENDPOINTS"):
    # units with a data platform of their own: {"a": "sc://spark-a.example:15002", ...}
    import json

    c.DataPlatform.endpoints = json.loads(os.environ["MARKET_SPARK_ENDPOINTS"])
if os.environ.get("MARKET_SERVICE_PROCESSES"):
    # several service processes sharing the port (PostgreSQL only; see README "Several
    # service processes")
    c.MarketplaceApp.processes = int(os.environ["MARKET_SERVICE_PROCESSES"])
