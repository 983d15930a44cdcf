"""One service process's runner or federated coordinator, for the scale-out tests:
``python scale_out_worker.py CONFIG``.

CONFIG (JSON): ``mode`` (``runner``, the default, or ``coordinator``), ``db_url``,
``blob_root``, ``lease_seconds``; for a runner also ``work_root``, ``bundles`` ({version id:
[bundle path, notebook name, outputs]}), ``max_attempts`` and ``finished`` (a file that gets one
line ``run_id status owner`` per ``on_finished`` call). A runner shares its database with other
processes (``exclusive=False``). Either runs until SIGTERM, and prints its lease owner id on its
first line."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from marketplace_ext.blobs import BlobStore
from marketplace_ext.federated.rounds import Coordinator
from marketplace_ext.leases import process_id
from marketplace_ext.orm import make_engine, make_session_factory
from marketplace_ext.runner import Runner


def coordinate(config: dict, sf) -> None:
    coordinator = Coordinator(sf, BlobStore(config["blob_root"]), interval=0.2,
                              lease_seconds=config["lease_seconds"])
    print(process_id(), flush=True)

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        task = asyncio.create_task(coordinator.loop())
        await stop.wait()
        task.cancel()

    asyncio.run(serve())


def main(config_path: str) -> None:
    config = json.loads(Path(config_path).read_text())
    engine = make_engine(config["db_url"])
    sf = make_session_factory(engine)
    if config.get("mode") == "coordinator":
        coordinate(config, sf)
        engine.dispose()
        return
    bundles = {int(k): (Path(p).read_bytes(), nb, outs)
               for k, (p, nb, outs) in config["bundles"].items()}

    def on_finished(session, run) -> None:
        with open(config["finished"], "a") as f:
            f.write(f"{run.id} {run.status} {runner.owner}\n")

    runner = Runner(sf, BlobStore(config["blob_root"]), Path(config["work_root"]),
                    max_workers=1, poll_interval=0.2,
                    bundle_for=lambda s, run: bundles[run.version_id],
                    env_for=lambda s, run: {}, on_finished=on_finished, exclusive=False,
                    lease_seconds=config["lease_seconds"], max_attempts=config["max_attempts"])
    print(runner.owner, flush=True)

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await runner.start()
        await stop.wait()
        await runner.stop()

    asyncio.run(serve())
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1])
