"""The marketplace service: a traitlets Application serving Tornado handlers behind the hub.

Started by the hub as a managed service (``python -m marketplace_ext --config=...``); the hub
passes ``JUPYTERHUB_API_TOKEN``, ``JUPYTERHUB_SERVICE_URL`` and ``JUPYTERHUB_SERVICE_PREFIX``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from jinja2 import Environment, FileSystemLoader, select_autoescape
from jupyterhub.services.auth import HubOAuth
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httpserver import HTTPServer
from traitlets import Bool, Dict, Float, Integer, Unicode, default
from traitlets.config import Application

from . import (
    __version__,
    blob_gc,
    dbutil,
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
from .catalog import DEFAULT_TERMS
from .certlog import TransparencyLog
from .download_links import DownloadLinks
from .envs import EnvironmentBuilder
from .exchange.grading import Grader
from .exchange.mail import MailConfig, send_pending
from .exchange.topics import sweep_loop as topic_sweep_loop
from .exchange.workshops import reminder_loop as workshop_reminder_loop
from .federated import orm as _fl_orm  # noqa: F401  (its tables belong to the metadata)
from .federated.common import DEFAULT_MAX_PARAMETERS as FL_DEFAULT_MAX_PARAMETERS
from .federated.rounds import Coordinator, warn_closing
from .handlers import default_handlers
from .handlers.base import MAX_JSON_BODY
from .hubapi import HubAPI
from .looplag import LoopLagMonitor
from .orm import Version, make_engine, make_session_factory, write_transaction
from .platform import DataPlatform
from .platform.supervisor import UnitServers
from .predict import PredictPool
from .runner import Runner
from .sandbox.config import SandboxConfig
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


class MarketplaceApp(Application):
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

    var_dir = Unicode(
        help="""Directory for the service's state in the embedded mode: the SQLite database,
        the cookie secret, blobs. Defaults to $MARKET_VAR_DIR, else ./var."""
    ).tag(config=True)

    @default("var_dir")
    def _default_var_dir(self):
        return os.environ.get("MARKET_VAR_DIR") or os.path.abspath("var")

    db_url = Unicode(
        help="""SQLAlchemy URL of the service database. Defaults to $MARKET_DB_URL, else a SQLite
        file under var_dir (WAL mode). PostgreSQL: postgresql+psycopg://user@host/db."""
    ).tag(config=True)

    @default("db_url")
    def _default_db_url(self):
        return os.environ.get("MARKET_DB_URL") or f"sqlite:///{self.var_dir}/marketplace.sqlite"

    upgrade_db = Bool(
        True,
        help="""Run pending Alembic migrations at start-up. With False the service refuses to
        start on an out-of-date schema (run `market db upgrade` yourself).""",
    ).tag(config=True)

    service_url = Unicode(
        help="URL this service listens on; the hub sets $JUPYTERHUB_SERVICE_URL."
    ).tag(config=True)

    @default("service_url")
    def _default_service_url(self):
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")

    service_prefix = Unicode(
        help="URL prefix the proxy routes to us; the hub sets $JUPYTERHUB_SERVICE_PREFIX."
    ).tag(config=True)

    @default("service_prefix")
    def _default_service_prefix(self):
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/marketplace/")

    hub_prefix = Unicode(
        help="The hub's URL prefix, for links back to it; the hub sets $JUPYTERHUB_BASE_URL."
    ).tag(config=True)

    @default("hub_prefix")
    def _default_hub_prefix(self):
        return url_path_join(os.environ.get("JUPYTERHUB_BASE_URL", "/"), "hub/")

    hub_api_url = Unicode(
        help="The hub's REST API; the hub sets $JUPYTERHUB_API_URL."
    ).tag(config=True)

    @default("hub_api_url")
    def _default_hub_api_url(self):
        return os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")

    reconcile_interval = Float(
        300.0,
        help="""Seconds between checks that every unit-<slug> hub group holds exactly the unit's
        members (also run at start-up). 0 disables the periodic check.""",
    ).tag(config=True)

    sharing_terms = Unicode(
        DEFAULT_TERMS,
        help="""The sharing agreement a publisher accepts for every version; the text and its
        sha256 are kept with the version, signed with the unit's key.""",
    ).tag(config=True)

    price_min = Integer(10, help="Lowest price (points) a plan may ask.").tag(config=True)
    price_max = Integer(50, help="Highest price (points) a plan may ask.").tag(config=True)

    max_bundle_bytes = Integer(
        200 * 2**20, help="Largest bundle upload (zip) and largest unpacked bundle, in bytes."
    ).tag(config=True)

    max_file_bytes = Integer(
        50 * 2**20, help="Largest single file inside a bundle, in bytes."
    ).tag(config=True)

    max_bundle_files = Integer(500, help="Most files a bundle may hold.").tag(config=True)

    initial_grant_points = Integer(
        500, help="Points the mint issues to every new unit's account."
    ).tag(config=True)

    fee_basis_points = Integer(
        600,
        help="""The operator's fee on every order in basis points (600 = 6 %); the fee is
        rounded down to the centipoint and the supplier gets the rest.""",
    ).tag(config=True)

    allow_self_purchase = Bool(
        False,
        help="Whether a unit may buy its own product (it can always use it without an order).",
    ).tag(config=True)

    log_origin = Unicode(
        "grid-data-supermarket.local/log",
        help="""The transparency log's origin line (C2SP checkpoint): a name unique to this
        log, conventionally host/path. Changing it starts a different log for verifiers.""",
    ).tag(config=True)

    log_key_file = Unicode(
        help="""The log's Ed25519 signing key (C2SP signed-note private key), created with mode
        0600 on first start. Defaults to var_dir/log_signing.key."""
    ).tag(config=True)

    @default("log_key_file")
    def _default_log_key_file(self):
        return os.path.join(self.var_dir, "log_signing.key")

    log_witnesses = Dict(
        {},
        help="""Witnesses whose cosignatures the log accepts: {name: vkey}, each vkey printed by
        `market witness --init`. Cosignatures of other keys are refused.""",
    ).tag(config=True)

    log_quorum = Integer(
        1,
        help="""How many configured witnesses must co-sign a checkpoint for it to be final
        (k of n). 0 means checkpoints are never reported final.""",
    ).tag(config=True)

    log_interval = Float(
        1.0,
        help="""Seconds between integrations of newly certified entries into the Merkle tree
        and a new signed checkpoint (entries learn their index at once).""",
    ).tag(config=True)

    run_workers = Integer(
        2, help="Product runs (papermill kernels) executing at once; more wait in the queue."
    ).tag(config=True)

    run_timeout = Integer(
        600, help="Default time limit of a run in seconds (a request may ask for less or more)."
    ).tag(config=True)

    run_max_timeout = Integer(
        3600, help="The longest time limit a run request may ask for, in seconds."
    ).tag(config=True)

    refunded_output_days = Integer(
        7, help="""Days a refunded run's outputs (a per-use run that failed, timed out or was
        cancelled) stay readable by the publishers of the product's unit, to debug their
        product; its caller never gets them (a refund must not buy anything). The outputs
        were computed on the caller's data, so 0 withholds them from everyone.""",
    ).tag(config=True)

    predict_workers = Integer(
        4, help="""Warm kernels kept for remote calls (one per tool version and calling unit);
        the least recently used is stopped to make room.""",
    ).tag(config=True)

    predict_workers_per_unit = Integer(
        2, help="""Warm remote-call kernels one calling unit may hold (0: no limit beyond
        predict_workers). A unit's call needing one more stops that unit's least recently used
        idle kernel, never another unit's; with all of that unit's kernels busy the call is
        refused with 429 quota_exceeded (field "unit", Retry-After), nothing charged.""",
    ).tag(config=True)

    max_active_runs_per_unit = Integer(
        4, help="""Runs (remote runs, a unit's own runs of its own products, model-to-data runs
        on its platform) one unit may have queued or running at once (0: no limit). One more
        is refused with 429 quota_exceeded (field "unit", Retry-After), nothing charged or
        stored.""",
    ).tag(config=True)

    blob_gc_interval = Float(
        3600.0, help="""Seconds between collections of orphan blobs (stored content no database
        row refers to: failed uploads, expired download links). 0 disables the periodic pass;
        `market blobs gc` runs one by hand.""",
    ).tag(config=True)

    blob_gc_grace = Float(
        86400.0, help="""Seconds an orphan blob is kept before it is collected, so an upload in
        flight or an unexpired download link is never broken; at least the download links'
        lifetime (300 s).""",
    ).tag(config=True)

    predict_idle_timeout = Float(
        600.0, help="Seconds an idle remote-call kernel is kept warm before it is stopped."
    ).tag(config=True)

    predict_timeout = Float(
        60.0, help="Seconds one remote call may run before its kernel is killed (504)."
    ).tag(config=True)

    predict_max_rows = Integer(
        10_000, help="The most rows one remote call may send."
    ).tag(config=True)

    envs_dir = Unicode(
        help="""Where products' own Python environments (from their requirements.txt) and
        kernelspecs are built; default ``<var_dir>/envs``.""",
    ).tag(config=True)

    @default("envs_dir")
    def _default_envs_dir(self) -> str:
        return str(Path(self.var_dir) / "envs")

    env_pip_timeout = Integer(
        900, help="Seconds pip may take to install one product environment before it fails."
    ).tag(config=True)

    m2d_max_output_bytes = Integer(
        50 * 1024 * 1024,
        help="""The largest file a model-to-data run may return to its demander (a model, not a
        table); a larger declared output is withheld and stays with the data owner.""",
    ).tag(config=True)

    fl_max_parameters = Integer(
        FL_DEFAULT_MAX_PARAMETERS,
        help="""The most parameters a federated project's model may have (its model.json
        "parameters"). Each update is about parameters / 100 Paillier ciphertexts, so this bounds
        the size of updates, aggregates and the service's work per round; a project over it is
        refused with 400 naming the field model.""",
    ).tag(config=True)

    db_threads = Integer(
        4, help="""Threads that run handlers' database work off the event loop (purchases and
        their caller lookups). More help PostgreSQL, whose writers run side by side; SQLite
        serialises writers, so more threads there only wait longer.""",
    ).tag(config=True)

    fl_tick_interval = Float(
        1.0, help="""Seconds between checks of federated rounds' deadlines (a round that reaches
        its quorum is aggregated at once)."""
    ).tag(config=True)

    topic_sweep_interval = Float(
        5.0, help="""Seconds between sweeps that expire topics past their deadline and give their
        escrowed bounties back (reads show them expired at once). 0: no sweep."""
    ).tag(config=True)

    # -- notifications: the periodic sweep and the optional e-mail copy (exchange/mail.py) --
    notify_interval = Float(
        30.0, help="""Seconds between passes that tell federated partners a round is about to
        close and, with smtp_host set, send the e-mail copies of new notifications."""
    ).tag(config=True)

    smtp_host = Unicode(
        "", help="""SMTP server for e-mail copies of notifications (users turn them on, with
        their address, on their inbox page). Empty, the default, sends no e-mail at all."""
    ).tag(config=True)

    smtp_port = Integer(25, help="The SMTP server's port (587 with starttls, 465 with ssl).").tag(
        config=True)

    smtp_security = Unicode(
        "none", help="How to reach the SMTP server: none, starttls or ssl."
    ).tag(config=True)

    smtp_username = Unicode("", help="SMTP login name; empty: no login.").tag(config=True)

    smtp_password_file = Unicode(
        "", help="""File holding the SMTP password (read at start; the password is never
        logged). Empty: no password."""
    ).tag(config=True)

    smtp_from = Unicode(
        "marketplace@localhost", help="The From address of notification e-mails."
    ).tag(config=True)

    mail_base_url = Unicode(
        "", help="""Scheme and host the links in notification e-mails start with, e.g.
        https://hub.example.org (the service prefix follows)."""
    ).tag(config=True)

    pid_file = Unicode(
        help="File the service writes its pid to while running (used by tests and the launcher)."
    ).tag(config=True)

    @default("pid_file")
    def _default_pid_file(self):
        return os.path.join(self.var_dir, "marketplace.pid")

    def initialize(self, argv=None) -> None:
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
        self.engine = make_engine(self.db_url)
        if self.upgrade_db:
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
        if not shared:
            memory = os.environ.get("MARKET_SPARK_MEMORY")
            self.unit_servers = UnitServers(parent=self, var_dir=str(var / "platform"),
                                            **({"driver_memory": memory} if memory else {}))
        self.data_platform = DataPlatform(
            parent=self, var_dir=str(var / "platform"), servers=self.unit_servers,
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
        # handlers' database work (handlers/base.py ``in_db``), off the event loop; SQLite
        # serialises writers anyway, so a few threads suffice and bound the waiting ones
        self.db_executor = ThreadPoolExecutor(self.db_threads, thread_name_prefix="db")
        self.runner = Runner(
            self.session_factory, self.blobs, var / "runs", max_workers=self.run_workers,
            bundle_for=self._bundle_for, env_for=self._run_env,
            kernel_for=product_envs.kernel_for(self.envs), on_finished=self._run_finished,
            limits=limits, platform_down=self.data_platform.unit_down,
        )
        self.predictor = PredictPool(
            var / "predict", max_workers=self.predict_workers,
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
        self.fl = Coordinator(self.session_factory, self.blobs, self.fl_tick_interval)
        self.loop_lag = LoopLagMonitor()
        self.mail = MailConfig(
            host=self.smtp_host, port=self.smtp_port, sender=self.smtp_from,
            security=self.smtp_security, username=self.smtp_username,
            password=(Path(self.smtp_password_file).read_text().strip()
                      if self.smtp_password_file else ""),
            base_url=self.mail_base_url, prefix=self.service_prefix)
        # workshop submissions are graded in the sandbox, off the loop (exchange/grading.py)
        self.grader = Grader(self.session_factory, self.blobs, var / "grading", limits=limits)
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

    async def predict(self, plan) -> list:
        """Answer a remote call from the tool version's warm kernel on the caller's platform."""
        with self.session_factory() as session:
            version = session.get(Version, plan.version_id)
            status = product_envs.env_status(self.envs, version)
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
        with self.session_factory() as session:
            write_transaction(session)
            size = self.tlog.integrate(session)
            session.commit()
            return size

    async def log_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                size = await loop.run_in_executor(None, self.integrate_log)
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
                await loop.run_in_executor(None, blob_gc.collect, self.session_factory,
                                           self.blobs, self.blob_gc_grace)
            except Exception:
                self.log.exception("orphan blob collection failed; retrying next interval")

    async def serve(self) -> None:
        url = urlparse(self.service_url)
        # every handler of ours streams its body and raises this per route once the caller is
        # authenticated (handlers/base.py); what does not stream (the OAuth callback) gets 1 MiB
        server = HTTPServer(self.tornado_app, xheaders=True, max_body_size=MAX_JSON_BODY)
        server.listen(url.port or 80, url.hostname or "127.0.0.1")
        Path(self.pid_file).write_text(str(os.getpid()))
        self.log.info("Marketplace %s at %s%s", __version__, self.service_url, self.service_prefix)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # the hub stops managed services with SIGINT; treat SIGTERM the same
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop_lag = asyncio.create_task(self.loop_lag.run())
        reconcile = asyncio.create_task(self.reconcile_loop())
        integrate = asyncio.create_task(self.log_loop())
        fl_rounds = asyncio.create_task(self.fl.loop())
        collect_blobs = asyncio.create_task(self.blob_gc_loop())
        notifications = asyncio.create_task(self.notify_loop())
        workshop_reminders = asyncio.create_task(workshop_reminder_loop(self.session_factory))
        topic_sweep = asyncio.create_task(topic_sweep_loop(self.session_factory,
                                                           self.topic_sweep_interval))
        await loop.run_in_executor(None, self.grader.recover)
        # the units' Spark servers come up in the background (a minute on two cores)
        await loop.run_in_executor(None, self._start_unit_servers)
        await self.runner.start()
        try:
            await stop.wait()
        finally:
            self.log.info("Marketplace shutting down")
            loop_lag.cancel()
            reconcile.cancel()
            integrate.cancel()
            fl_rounds.cancel()
            collect_blobs.cancel()
            notifications.cancel()
            workshop_reminders.cancel()
            topic_sweep.cancel()
            self.grader.shutdown()
            await self.runner.stop()
            if self.unit_servers is not None:
                await loop.run_in_executor(None, self.unit_servers.stop)
            await self.predictor.shutdown()
            server.stop()
            await server.close_all_connections()
            self.engine.dispose()
            Path(self.pid_file).unlink(missing_ok=True)

    def start(self) -> None:
        try:
            asyncio.run(self.serve())
        except KeyboardInterrupt:
            pass


main = MarketplaceApp.launch_instance
