"""`market run`'s own data platform: started before the hub, stopped with nothing left."""

from __future__ import annotations

import os

from conftest import free_port

from marketplace_ext.launcher import Platform, pid_alive
from marketplace_ext.platform import DataPlatform


def test_launcher_starts_and_stops_a_shared_spark_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MARKET_SPARK_REMOTE"}
    # the shared development server; the default (one server per unit) is the service's
    env.update(MARKET_SPARK_SHARED="1", MARKET_SPARK_PORT=str(free_port()),
               MARKET_SPARK_MEMORY="1g")
    platform = Platform(tmp_path / "var", port=free_port(), env=env, log=lambda *a: None)
    platform.start_spark()
    try:
        pid = platform.spark.pid
        assert platform.spark_remote == f"sc://127.0.0.1:{env['MARKET_SPARK_PORT']}"
        dp = DataPlatform(default_endpoint=platform.spark_remote, var_dir=str(tmp_path / "dp"))
        try:
            assert dp.health()["ok"]
        finally:
            dp.close()
        assert (tmp_path / "var" / "spark" / "metastore_db").exists()  # state under var/
    finally:
        platform.stop()
    assert not pid_alive(pid)
    assert platform.spark is None
