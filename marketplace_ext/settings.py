"""The service's settings: every ``MarketplaceApp`` trait but the command line's own.

They are set in ``hub_config/marketplace_config.py`` as ``c.MarketplaceApp.<name>`` (this
class's own section name works too) and listed by ``python -m marketplace_ext --help-all``.
Each has its help text; defaults come from the environment the hub gives a managed service
where one applies (``$JUPYTERHUB_SERVICE_URL``, ``$MARKET_DB_URL``...).
"""

from __future__ import annotations

import os
from pathlib import Path

from jupyterhub.utils import url_path_join
from traitlets import Bool, Dict, Float, Integer, TraitError, Unicode, default, validate
from traitlets.config import Configurable

from .catalog import DEFAULT_TERMS
from .federated.common import DEFAULT_MAX_PARAMETERS as FL_DEFAULT_MAX_PARAMETERS


class MarketplaceSettings(Configurable):
    """The marketplace service's configuration (mixed into :class:`~.app.MarketplaceApp`)."""

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

    shared_database = Bool(
        False,
        help="""Other service processes, on this host or others, use the same (PostgreSQL)
        database. Runs, the log integrator and the federated round coordinator are then taken
        over from a process only when its leases expire (leases.py), instead of at start. Off:
        this process owns the database alone, and at start fails or queues again every run a
        previous instance left running.""",
    ).tag(config=True)

    processes = Integer(
        1,
        help="""Service processes on this host sharing the service's port (SO_REUSEPORT: the
        kernel spreads connections over them). More than 1 needs a PostgreSQL db_url and
        implies shared_database. The first process starts the others and stops them with
        itself; it alone supervises the units' embedded Spark servers, reconciles hub groups,
        collects orphan blobs and sends reminders and e-mails. Every process serves the API,
        executes runs and predictions, and takes turns at the log integrator and the
        federated coordinator through leases.""",
    ).tag(config=True)

    process_index = Integer(
        0,
        help="""This process's number among `processes` (0: the first, which starts the
        others with 1, 2, ...). Set by the first process; not for configuration files.""",
    ).tag(config=True)

    lease_seconds = Float(
        30.0,
        help="""How long a service process's claim on a run or a singleton job (the log
        integrator, the federated coordinator) holds without renewal: the failover delay when
        a process dies. Renewed every third of it.""",
    ).tag(config=True)

    run_max_attempts = Integer(
        2,
        help="""Executions of a run at most: a run whose service process died is queued again
        while it has attempts left (the notebook starts afresh), else failed and refunded.""",
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
        4, help="""Threads of the "db" executor, which runs handlers' database work off the event
        loop (purchases, caller lookups, the transactions of publishing, reviews, downloads,
        predictions, model-to-data and federated projects). More help PostgreSQL, whose writers
        run side by side; SQLite serialises writers, so more threads there only wait longer.""",
    ).tag(config=True)

    write_batch = Integer(
        32, help="""On SQLite, the most purchases committed as one transaction (group commit,
        write_batches.py): purchases that arrive together run one after the other in savepoints
        of one transaction on one thread, and each buyer is answered once it committed. One
        purchase that fails is rolled back alone. 1 turns batching off (one transaction per
        purchase). PostgreSQL always runs one transaction per purchase: its writers run side
        by side.""",
    ).tag(config=True)

    @validate("write_batch")
    def _valid_write_batch(self, proposal):
        if proposal.value < 1:
            raise TraitError(f"write_batch must be at least 1, not {proposal.value}")
        return proposal.value

    io_threads = Integer(
        4, help="""Threads of the "io" executor: file and blob reads and writes (uploaded
        bundles unpacked and stored, files taken out of bundles, downloads streamed in
        chunks). Bounded by the disk more than by the cores.""",
    ).tag(config=True)

    spark_threads = Integer(
        4, help="""Threads of the "spark" executor: calls to the units' data platforms (queries,
        view exports, views built when a data product is approved). Each waits on a Spark
        server, so a call that takes a minute holds one thread; more threads let more units'
        calls run side by side.""",
    ).tag(config=True)

    log_threads = Integer(
        1, help="""Threads of the "log" executor, which integrates the transparency log's new
        entries every log_interval seconds. One integrator is enough (an integration is a
        single write transaction).""",
    ).tag(config=True)

    gil_switch_interval = Float(
        0.001, help="""Seconds a thread may hold the interpreter lock while another waits for it
        (sys.setswitchinterval; Python's default is 0.005). The event loop gives the lock up at
        every socket read and write and must win it back from the executors' threads; with
        5 ms it waits up to 5 ms each time while they run queries, and its lag under load
        grows by that much per I/O step. 1 ms keeps it short.""",
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
