"""The marketplace service: a traitlets Application serving Tornado handlers behind the hub.

Started by the hub as a managed service (``python -m marketplace_ext --config=...``); the hub
passes ``JUPYTERHUB_API_TOKEN``, ``JUPYTERHUB_SERVICE_URL`` and ``JUPYTERHUB_SERVICE_PREFIX``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from jinja2 import Environment, FileSystemLoader, select_autoescape
from jupyterhub.services.auth import HubOAuth
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httpserver import HTTPServer
from traitlets import Unicode
from traitlets.config import Application

from . import (
    __version__,
    blob_gc,
    dbutil,
    leases,
    m2d,
    points,
    product_envs,
    remote_run,
    retrain,
    run_queue,
)
from . import exchange as _exchange  # noqa: F401  (its tables belong to the metadata)
from .blobs import BlobStore
from .bundle import BundleLimits
from .certlog import TransparencyLog
from .download_links import DownloadLinks
from .envs import EnvironmentBuilder
from .exchange.grading import Grader
from .exchange.mail import MailConfig, send_pending
from .exchange.topics import sweep_loop as topic_sweep_loop
from .exchange.workshops import reminder_loop as workshop_reminder_loop
from .executors import NamedExecutors
from .federated import orm as _fl_orm  # noqa: F401  (its tables belong to the metadata)
from .federated.rounds import Coordinator, warn_closing
from .handlers import default_handlers
from .handlers.base import MAX_JSON_BODY
from .hubapi import HubAPI
from .looplag import LoopLagMonitor
from .orm import Version, make_engine, make_session_factory, write_transaction
from .platform import DataPlatform
from .platform.supervisor import EndpointsFile, UnitServers
from .predict import PredictPool
from .runner import Runner
from .sandbox.config import SandboxConfig
from .service_processes import start_workers, stop_workers
from .settings import MarketplaceSettings
from .signing import UnitSigner
from .units import UnitDirectory

HERE = Path(__file__).parent


def read_or_create_secret(path: Path, nbytes: int = 32) -> bytes:
    """A random secret kept in ``path`` (mode 0600), created on first use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    secret = secrets.token_bytes(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex())
    return secret


class MarketplaceApp(Application, MarketplaceSettings):
    """The service: its settings (:class:`~.settings.MarketplaceSettings`, set as
    ``c.MarketplaceApp.<name>``), start-up, the HTTP server and the background loops."""

    name = "marketplace"
    description = "The Grid Data Supermarket service (run by JupyterHub as a managed service)."
    version = __version__

    aliases = {
        "config": "MarketplaceApp.config_file",
        "db-url": "MarketplaceApp.db_url",
        "var-dir": "MarketplaceApp.var_dir",
        "log-level": "Application.log_level",
    }

    config_file = Unicode(
        "", help="Python config file to load (e.g. hub_config/marketplace_config.py)."
    ).tag(config=True)

    def initialize(self, argv=None) -> None:
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
        if self.processes < 1 or not 0 <= self.process_index < self.processes:
            raise ValueError(f"processes must be at least 1 and process_index below it "
                             f"(processes={self.processes}, process_index={self.process_index})")
        if self.processes > 1:
            if not self.db_url.startswith("postgresql"):
                raise ValueError(f"processes={self.processes} needs a PostgreSQL db_url: "
                                 "SQLite admits one writer process at a time")
            self.shared_database = True
        self.engine = make_engine(self.db_url)
        if self.upgrade_db and self.process_index == 0:  # the others start after it
            dbutil.upgrade(self.db_url)
        else:
            dbutil.check(self.db_url)
        self.session_factory = make_session_factory(self.engine)
        token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        self.hub = HubAPI(self.hub_api_url, token)
        self.economy = points.EconomyRules(
            initial_grant=self.initial_grant_points * points.CENTS,
            fee_basis_points=self.fee_basis_points,
            allow_self_purchase=self.allow_self_purchase,
        )
        self.units = UnitDirectory(
            self.session_factory, self.hub,
            on_created=self._unit_created,
        )
        with self.session_factory() as session:
            write_transaction(session)
            opened = points.open_missing_accounts(session, self.economy)
            session.commit()
        if opened:
            self.log.info("opened points accounts for %i existing unit(s)", opened)
        var = Path(self.var_dir)
        self.blobs = BlobStore(var / "blobs")
        self.tmp_dir = var / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.signer = UnitSigner(read_or_create_secret(var / "marketplace_kek"))
        self.download_links = DownloadLinks(read_or_create_secret(var / "download_link_key"))
        self.tlog = TransparencyLog(self.log_origin, Path(self.log_key_file),
                                    self.log_witnesses, self.log_quorum)
        # Units' data platforms: a remote endpoint (DataPlatform.endpoints, with its token),
        # else the unit's own embedded Spark Connect server, which this service supervises
        # (it knows every unit, also those created later). MARKET_SPARK_REMOTE instead puts
        # every unit on one shared server: development and tests only, units then share it.
        shared = os.environ.get("MARKET_SPARK_REMOTE")
        self.unit_servers = None
        servers = None
        if not shared and self.process_index > 0:  # the first process supervises them
            servers = EndpointsFile(var / "platform")
        elif not shared:
            memory = os.environ.get("MARKET_SPARK_MEMORY")
            self.unit_servers = servers = UnitServers(
                parent=self, var_dir=str(var / "platform"),
                **({"driver_memory": memory} if memory else {}))
        self.data_platform = DataPlatform(
            parent=self, var_dir=str(var / "platform"), servers=servers,
            **({"default_endpoint": shared} if shared else {}),
        )
        self._version_bundle = remote_run.bundle_for(self.blobs)
        # product code (runs, remote calls, environment builds) runs sandboxed with these limits
        self.sandbox_config = SandboxConfig(parent=self)
        limits = self.sandbox_config.limits()
        self.envs = EnvironmentBuilder(Path(self.envs_dir), pip_timeout=self.env_pip_timeout,
                                       limits=limits)
        # one build at a time: pip on two cores is slow enough once
        self.env_builds = ThreadPoolExecutor(1, thread_name_prefix="env-build")
        # blocking work of handlers and loops, off the event loop, by kind (executors.py)
        self.executors = NamedExecutors(
            {"db": self.db_threads, "io": self.io_threads, "spark": self.spark_threads,
             "log": self.log_threads}, self.session_factory, write_batch=self.write_batch)
        self.runner = Runner(
            self.session_factory, self.blobs, var / "runs", max_workers=self.run_workers,
            bundle_for=self._bundle_for, env_for=self._run_env,
            kernel_for=product_envs.kernel_for(self.envs), on_finished=self._run_finished,
            limits=limits, platform_down=self.data_platform.unit_down,
            exclusive=not self.shared_database, lease_seconds=self.lease_seconds,
            max_attempts=self.run_max_attempts,
        )
        # each process sweeps its own predict and grading directories at start
        own = "" if self.process_index == 0 else f"-p{self.process_index}"
        self.predictor = PredictPool(
            var / f"predict{own}", max_workers=self.predict_workers,
            idle_timeout=self.predict_idle_timeout, call_timeout=self.predict_timeout,
            max_rows=self.predict_max_rows, limits=limits,
            max_workers_per_unit=self.predict_workers_per_unit)
        run_queue.configure(max_active_per_unit=self.max_active_runs_per_unit)
        if self.blob_gc_grace < self.download_links.ttl_seconds:
            raise ValueError(f"blob_gc_grace ({self.blob_gc_grace:g} s) must be at least the "
                             f"download links' lifetime ({self.download_links.ttl_seconds} s)")
        self.bundle_limits = BundleLimits(
            max_file_bytes=self.max_file_bytes, max_total_bytes=self.max_bundle_bytes,
            max_files=self.max_bundle_files, price_min=self.price_min, price_max=self.price_max,
        )
        self.hub_auth = HubOAuth(
            api_token=token,
            api_url=self.hub_api_url,
            oauth_redirect_uri=url_path_join(self.service_prefix, "oauth_callback"),
            cache_max_age=60,
        )
        self.fl = Coordinator(self.session_factory, self.blobs, self.fl_tick_interval,
                              lease_seconds=self.lease_seconds if self.shared_database else None)
        self.loop_lag = LoopLagMonitor()
        self.mail = MailConfig(
            host=self.smtp_host, port=self.smtp_port, sender=self.smtp_from,
            security=self.smtp_security, username=self.smtp_username,
            password=(Path(self.smtp_password_file).read_text().strip()
                      if self.smtp_password_file else ""),
            base_url=self.mail_base_url, prefix=self.service_prefix)
        # workshop submissions are graded in the sandbox, off the loop (exchange/grading.py)
        self.grader = Grader(self.session_factory, self.blobs, var / f"grading{own}",
                             limits=limits)
        self.tornado_app = self.make_tornado_app()

    def _unit_created(self, session, unit, actor) -> None:
        points.open_account(session, unit, self.economy, actor)
        if self.unit_servers is not None and unit.slug not in self.data_platform.endpoints:
            self.unit_servers.ensure(unit.slug)  # starts in the background

    def _start_unit_servers(self) -> None:
        if self.unit_servers is None:
            return
        from .orm import Unit

        with self.session_factory() as session:
            slugs = [slug for (slug,) in session.query(Unit.slug)]
        self.unit_servers.start([s for s in slugs if s not in self.data_platform.endpoints])

    def _bundle_for(self, session, run):
        if run.mode == "m2d":
            return m2d.bundle_for(session, self.blobs, run)
        return self._version_bundle(session, run)

    def _run_env(self, session, run) -> dict[str, str]:
        env = remote_run.env_for(self.data_platform)(session, run)
        # products' own kernelspecs live under envs_dir
        return {**env, **self.envs.jupyter_path_env(os.environ.get("JUPYTER_PATH"))}

    async def in_db(self, work, *args):
        """``work(session, *args)`` in the db executor (see :mod:`.executors`)."""
        return await self.executors.in_db(work, *args)

    async def in_write(self, work, *args):
        """``work(session, *args)`` as one write transaction in the db executor."""
        return await self.executors.in_write(work, *args)

    async def in_io(self, work, *args):
        """``work(*args)`` (file or blob I/O) in the io executor."""
        return await self.executors.run("io", work, *args)

    async def in_spark(self, work, *args):
        """``work(*args)`` (a data platform call) in the spark executor."""
        return await self.executors.run("spark", work, *args)

    def _env_status(self, session, version_id: int):
        return product_envs.env_status(self.envs, session.get(Version, version_id))

    async def predict(self, plan) -> list:
        """Answer a remote call from the tool version's warm kernel on the caller's platform."""
        status = await self.in_db(self._env_status, plan.version_id)
        if status is not None and status.state != "ready":
            raise product_envs.EnvironmentNotReady(
                f"the product's environment is {status.state}", "product")
        env = {"SPARK_REMOTE": self.data_platform.spark_remote_for(plan.unit),
               "UNIT_DATABASE": self.data_platform.database_for(plan.unit),
               **self.envs.jupyter_path_env(os.environ.get("JUPYTER_PATH"))}
        return await self.predictor.predict(
            plan.bundle_sha256, lambda: self.blobs.get(plan.bundle_sha256), plan.rows, env,
            kernel_name=status.kernel_name if status else None, unit=plan.unit)

    def build_environment(self, requirements: str) -> None:
        """Build a product environment in the background; its status shows on the review
        page, and runs of its version wait for it."""

        def build() -> None:
            status = self.envs.build(requirements)
            level = self.log.info if status.state == "ready" else self.log.warning
            level("product environment %s: %s %s", status.kernel_name, status.state,
                  status.error or "")

        self.env_builds.submit(build)

    def _run_finished(self, session, run) -> None:
        if run.mode == "m2d":
            m2d.finish(session, self.blobs, run, self.m2d_max_output_bytes)
        elif run.mode == retrain.MODE:  # further training: the derived model and its lineage
            retrain.finish(session, self.blobs, run)
        else:
            remote_run.finish_run(session, run)

    def make_tornado_app(self) -> web.Application:
        prefix = self.service_prefix.rstrip("/")
        handlers = [(prefix + pattern, handler) for pattern, handler in default_handlers]
        jinja_env = Environment(
            loader=FileSystemLoader(str(HERE / "templates")),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        return web.Application(
            handlers,
            market=self,
            hub_auth=self.hub_auth,
            jinja_env=jinja_env,
            cookie_secret=read_or_create_secret(Path(self.var_dir) / "marketplace_cookie_secret"),
            static_path=str(HERE / "static"),
            static_url_prefix=url_path_join(self.service_prefix, "static/"),
            # HubOAuth applies its own xsrf check to cookie-authenticated writes
            xsrf_cookies=False,
            log_function=self._log_request,
        )

    def _log_request(self, handler: web.RequestHandler) -> None:
        status = handler.get_status()
        level = self.log.info if status < 400 else self.log.warning
        if handler.request.path.endswith("/api/health") and status == 200:
            level = self.log.debug
        # the query string may carry an OAuth code or token: log the path only
        level("%s %s %s %.1fms", status, handler.request.method, handler.request.path,
              1000 * handler.request.request_time())

    async def reconcile_loop(self) -> None:
        delay = 1.0
        while True:
            try:
                summary = await self.units.reconcile()
                self.log.info("hub groups reconciled: %s", summary)
                if self.reconcile_interval <= 0:
                    return
                delay = self.reconcile_interval
            except Exception as e:  # the hub may still be starting
                self.log.warning("hub group reconcile failed (retrying in %.0fs): %s", delay, e)
                delay = min(delay * 2, 60.0)
            await asyncio.sleep(delay)

    def integrate_log(self) -> int | None:
        """One integration pass, by whichever service process holds the integrator's lease."""
        if self.shared_database:  # one process alone needs no lease (nor its write)
            with self.session_factory() as session:
                write_transaction(session)
                held = leases.acquire(session, leases.LOG_INTEGRATOR, leases.process_id(),
                                      self.lease_seconds)
                session.commit()
            if not held:
                return None
        with self.session_factory() as session:
            write_transaction(session)
            size = self.tlog.integrate(session)
            session.commit()
            return size

    async def log_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                size = await loop.run_in_executor(self.executors["log"], self.integrate_log)
                if size is not None:
                    self.log.debug("log checkpoint at size %i", size)
            except Exception:
                self.log.exception("log integration failed; retrying")
            await asyncio.sleep(self.log_interval)

    def notify_pass(self) -> int:
        """Blocking (a worker thread): warn federated partners of rounds about to close, then
        send due notification e-mails (after their events committed). Returns mails sent."""
        with self.session_factory() as session:
            write_transaction(session)
            warn_closing(session)
            session.commit()
        return send_pending(self.session_factory, self.mail)

    async def notify_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self.notify_interval > 0:
            try:
                await loop.run_in_executor(None, self.notify_pass)
            except Exception:
                self.log.exception("notification pass failed; retrying next interval")
            await asyncio.sleep(self.notify_interval)

    async def blob_gc_loop(self) -> None:
        """Collect orphan blobs every ``blob_gc_interval`` seconds (first after one interval)."""
        loop = asyncio.get_running_loop()
        while self.blob_gc_interval > 0:
            await asyncio.sleep(self.blob_gc_interval)
            try:
                await loop.run_in_executor(self.executors["io"], blob_gc.collect,
                                           self.session_factory, self.blobs, self.blob_gc_grace)
            except Exception:
                self.log.exception("orphan blob collection failed; retrying next interval")

    async def unit_server_loop(self, interval: float = 10.0) -> None:
        """With several processes, a unit created through another one gets its embedded Spark
        server from the first process within ``interval`` seconds."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            try:
                await loop.run_in_executor(None, self._start_unit_servers)
            except Exception:
                self.log.exception("starting new units' data platforms failed; retrying")

    async def serve(self) -> None:
        # the loop wins the interpreter lock back from busy executor threads sooner
        sys.setswitchinterval(self.gil_switch_interval)
        url = urlparse(self.service_url)
        # every handler of ours streams its body and raises this per route once the caller is
        # authenticated (handlers/base.py); what does not stream (the OAuth callback) gets 1 MiB
        server = HTTPServer(self.tornado_app, xheaders=True, max_body_size=MAX_JSON_BODY)
        server.listen(url.port or 80, url.hostname or "127.0.0.1",
                      reuse_port=self.processes > 1)
        first = self.process_index == 0
        if first:
            Path(self.pid_file).write_text(str(os.getpid()))
        self.log.info("Marketplace %s at %s%s (process %d of %d)", __version__,
                      self.service_url, self.service_prefix, self.process_index + 1,
                      self.processes)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # the hub stops managed services with SIGINT; treat SIGTERM the same
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # every process: its loop-lag probe; the log integrator and the FL coordinator, which
        # take turns through leases. The first process only: the rest (each once per host)
        loops = [self.loop_lag.run(), self.log_loop(), self.fl.loop()]
        if first:
            loops += [self.reconcile_loop(), self.blob_gc_loop(), self.notify_loop(),
                      workshop_reminder_loop(self.session_factory),
                      topic_sweep_loop(self.session_factory, self.topic_sweep_interval)]
            if self.processes > 1:
                loops.append(self.unit_server_loop())
        tasks = [asyncio.create_task(c) for c in loops]
        # every page template compiled once now, on the io executor: a first visit would
        # compile its template (tens of ms) on the loop
        tasks.append(loop.run_in_executor(self.executors["io"], warm_templates,
                                          self.tornado_app.settings["jinja_env"]))
        await loop.run_in_executor(None, self.grader.recover)
        workers = []
        if first:
            # the units' Spark servers come up in the background (a minute on two cores)
            await loop.run_in_executor(None, self._start_unit_servers)
            workers = await loop.run_in_executor(None, start_workers, self.processes)
        await self.runner.start()
        # the startup heap (modules, ORM mappers, parsed documents) moves to the permanent
        # generation, so a full collection walks only what requests allocate: on a loaded
        # machine one walk of everything paused every thread, the loop's included, for tenths
        # of a second
        gc.collect()
        gc.freeze()
        try:
            await stop.wait()
        finally:
            self.log.info("Marketplace shutting down")
            for task in tasks:
                task.cancel()
            await loop.run_in_executor(None, stop_workers, workers)
            self.grader.shutdown()
            await self.runner.stop()
            if self.unit_servers is not None:
                await loop.run_in_executor(None, self.unit_servers.stop)
            await self.predictor.shutdown()
            server.stop()
            await server.close_all_connections()
            self.executors.shutdown()
            self.engine.dispose()
            if first:
                Path(self.pid_file).unlink(missing_ok=True)

    def start(self) -> None:
        try:
            asyncio.run(self.serve())
        except KeyboardInterrupt:
            pass


main = MarketplaceApp.launch_instance


def warm_templates(env: Environment) -> int:
    """Compile (and cache) every template of ``env``; returns how many."""
    names = env.list_templates(extensions=["html"])
    for name in names:
        env.get_template(name)
    return len(names)
