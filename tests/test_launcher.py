"""`market run`'s own data platform: started before the hub, stopped with nothing left."""

from __future__ import annotations

import json
import os

from conftest import free_port

from marketplace_ext import merkle
from marketplace_ext.launcher import DEMO_WITNESS, Platform, configure_demo_witness, pid_alive
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


def test_make_run_gets_a_witness_of_its_own_unless_witnesses_are_configured(tmp_path):
    platform = Platform(tmp_path / "var", env={"PATH": os.environ["PATH"]})
    state = configure_demo_witness(platform)
    assert state == platform.var_dir / "witness"
    witnesses = json.loads(platform.env["MARKET_LOG_WITNESSES"])
    assert list(witnesses) == [DEMO_WITNESS] and platform.env["MARKET_LOG_QUORUM"] == "1"
    assert merkle.parse_vkey(witnesses[DEMO_WITNESS]).name == DEMO_WITNESS
    assert (state / "witness.key").stat().st_mode & 0o077 == 0  # its key is its own
    # a restart keeps the same key (the log's configuration names it)
    again = Platform(tmp_path / "var", env={"PATH": os.environ["PATH"]})
    configure_demo_witness(again)
    assert json.loads(again.env["MARKET_LOG_WITNESSES"]) == witnesses
    configured = Platform(tmp_path / "other", env={"MARKET_LOG_WITNESSES": "{}", "PATH": "/bin"})
    assert configure_demo_witness(configured) is None
    assert "MARKET_LOG_QUORUM" not in configured.env
