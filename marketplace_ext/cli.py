"""``market``: the command line of the Grid Data Supermarket."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__


def default_var_dir() -> Path:
    return Path(os.environ.get("MARKET_VAR_DIR") or "var").resolve()


def cmd_run(args) -> int:
    from .launcher import run

    return run(args.var_dir, port=args.port, seed=not args.no_seed)


def cmd_db_upgrade(args) -> int:
    from . import dbutil

    url = args.db_url or f"sqlite:///{args.var_dir}/marketplace.sqlite"
    dbutil.upgrade(url)
    print(f"database {dbutil.redact_url(url)} at revision {dbutil.current_revision(url)}")
    return 0


def cmd_demo_seed(args) -> int:
    from . import demo

    accounts = demo.seed(args.hub_url, args.var_dir)
    print(demo.format_logins(accounts))
    return 0


def cmd_validate(args) -> int:
    from .bundle import BundleLimits, validate_dir

    limits = BundleLimits(price_min=args.price_min, price_max=args.price_max)
    problems = validate_dir(args.dir, limits)
    for problem in problems:
        where = f"{args.dir}/{problem.file}" if problem.file else str(args.dir)
        field = f" {problem.field}:" if problem.field else ""
        print(f"{where}:{field} {problem.message}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {args.dir}", file=sys.stderr)
        return 1
    print(f"{args.dir}: ok")
    return 0


def cmd_new(args) -> int:
    from .bundle import new_product

    path = new_product(args.kind, args.name, args.dir)
    print(f"created {path} from the {args.kind} template; edit it, then `market validate {path}`")
    return 0


def cmd_publish(args) -> int:
    from .client import MarketAPIError

    market = _market(args)
    if not args.accept_terms:
        print(market.terms(), "\n")
        if not sys.stdin.isatty() or input("Accept on behalf of your unit? [yes/no] ") != "yes":
            print("not published: the sharing agreement was not accepted (--accept-terms)",
                  file=sys.stderr)
            return 2
    try:
        result = market.publish(args.dir)
    except MarketAPIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    verb = "submitted" if result["created"] else "already submitted"
    print(f"{result['product']} {result['version']} {verb}: state {result['state']}, "
          f"sha256 {result['sha256']}")
    return 0


def cmd_demo_data(args) -> int:
    from . import demo

    record = demo.load_demo_data(args.var_dir, args.remote, scale=args.scale, seed=args.seed,
                                 data_dir=args.data)
    print(f"loaded in {record['seconds']} s")
    return 0


def _market(args):
    from .client import Market

    return Market(args.url, args.token)


def cmd_verify(args) -> int:
    import json

    from . import merkle
    from .verify import (
        VerificationFailed,
        fetch_proof_bundle,
        trusted_log_key,
        verify_entry,
        verify_file,
        verify_order,
    )

    market = None if args.proof else _market(args)
    try:
        key, pinned = trusted_log_key(market, args.log_key or os.environ.get("MARKET_LOG_KEY"))
        if not pinned:
            print(f"note: trusting the log key the service announces ({key}); pin it with "
                  "--log-key or $MARKET_LOG_KEY", file=sys.stderr)
        if args.what == "order":
            order_id = int(args.target)
            if args.proof:
                bundle = json.loads(Path(args.proof).read_text())
            else:
                orders = market.request("GET", "orders", params={"limit": 200})["orders"]
                order = next((o for o in orders if o["id"] == order_id), None)
                if order is None or order.get("log_index") is None:
                    raise VerificationFailed(f"order {order_id} is not one of your unit's")
                bundle = fetch_proof_bundle(market, order["log_index"])
            statement = verify_order(bundle, key, order_id)
            print(f"order {order_id}: {statement['plan']} of {statement['product']} for "
                  f"{statement['price']} points, certified at log index {bundle['index']}")
        elif args.what == "entry":
            index = int(args.target)
            bundle = (json.loads(Path(args.proof).read_text()) if args.proof
                      else fetch_proof_bundle(market, index))
            if bundle["index"] != index:
                raise VerificationFailed(f"the proof bundle is for entry {bundle['index']}")
            statement = verify_entry(bundle, key, args.type)
            what = (f"an entry of type {statement['type']} ({statement['time']})" if statement
                    else "a legacy entry (its contents are private)")
            detail = ("; its details check out" if "subject" in statement
                      else "")
            print(f"log index {index}: {what}, included in the signed checkpoint of size "
                  f"{merkle.parse_checkpoint(merkle.split_note(bundle['checkpoint'])[0]).size}"
                  f"{detail}")
        else:
            if not (args.product and args.version):
                print("error: verify FILE needs --product and --version", file=sys.stderr)
                return 2
            if args.proof:
                bundle = json.loads(Path(args.proof).read_text())
            else:
                product = market.product(args.product)
                version = next((v for v in product["versions"]
                                if v["version"] == args.version), None)
                if version is None or version.get("log_index") is None:
                    raise VerificationFailed(f"{args.product} has no version {args.version}")
                bundle = fetch_proof_bundle(market, version["log_index"])
            result = verify_file(Path(args.target), bundle, key, args.product, args.version)
            print(f"{args.target}: sha256 {result['sha256']} is a file of {args.product} "
                  f"{args.version}, certified at log index {result['index']}")
        if args.save_proof:
            Path(args.save_proof).write_text(json.dumps(bundle, indent=1))
            print(f"proof bundle saved to {args.save_proof} (verify offline with --proof)")
    except VerificationFailed as e:
        print(f"VERIFICATION FAILED: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_witness(args) -> int:
    from . import merkle
    from .witness import WitnessState, run_once

    state = WitnessState(args.state)
    if args.init:
        vkey = state.init(args.name)
        print(f"witness key: {vkey}\nadd it to the log's MarketplaceApp.log_witnesses")
        return 0
    if args.every is not None:
        return _witness_loop(_market(args), state, args.log_key, args.every)
    try:
        result = run_once(_market(args), state, args.log_key)
    except merkle.WitnessError as e:
        print(f"REFUSED: {e}", file=sys.stderr)
        return 3
    _print_witnessed(result)
    return 0


def _print_witnessed(result: dict) -> None:
    previous = result["previous"]
    since = f" (consistent with {previous})" if previous is not None else " (first contact)"
    final = "final" if result["final"] else "not final yet"
    print(f"co-signed checkpoint at size {result['size']}{since}; "
          f"witnesses: {', '.join(result['witnesses'])}; {final}", flush=True)


def _witness_loop(market, state, log_key: str | None, every: float) -> int:
    """Co-sign each new checkpoint until stopped (SIGTERM or Ctrl-C); a rollback or a fork
    ends the loop with status 3, an unreachable log is retried at the next round."""
    import signal
    import time

    import requests

    from . import merkle
    from .client import MarketAPIError
    from .witness import run_once

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    seen = None
    try:
        while True:
            try:
                size = market.request("GET", "log/checkpoint")["size"]
                if size != seen:
                    _print_witnessed(run_once(market, state, log_key))
                    seen = size
            except merkle.WitnessError as e:
                print(f"REFUSED: {e}", file=sys.stderr)
                return 3
            except (requests.RequestException, MarketAPIError) as e:
                print(f"warning: the log did not answer ({e}); trying again", file=sys.stderr)
            time.sleep(every)  # a daemon's pace, not a synchronisation
    except KeyboardInterrupt:
        return 0


def cmd_log_fsck(args) -> int:
    from . import dbutil
    from .log_fsck import fsck
    from .orm import make_engine, make_session_factory

    url = args.db_url or f"sqlite:///{args.var_dir}/marketplace.sqlite"
    if not args.db_url and not (Path(args.var_dir) / "marketplace.sqlite").exists():
        print(f"error: no service database in {args.var_dir} (use --var-dir or --db-url)",
              file=sys.stderr)
        return 2
    dbutil.check(url)
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        report = fsck(session)
    engine.dispose()
    if report["ok"]:
        print(f"log ok: {report['entries']} entries, tree size {report['tree_size']}")
        return 0
    print(f"LOG CORRUPT at index {report['index']}: {report['problem']}", file=sys.stderr)
    return 1


def cmd_blobs_gc(args) -> int:
    from . import dbutil
    from .blob_gc import collect
    from .blobs import BlobStore
    from .orm import make_engine, make_session_factory

    url = args.db_url or f"sqlite:///{args.var_dir}/marketplace.sqlite"
    if not args.db_url and not (Path(args.var_dir) / "marketplace.sqlite").exists():
        print(f"error: no service database in {args.var_dir} (use --var-dir or --db-url)",
              file=sys.stderr)
        return 2
    dbutil.check(url)
    engine = make_engine(url)
    try:
        result = collect(make_session_factory(engine), BlobStore(Path(args.var_dir) / "blobs"),
                         args.grace, dry_run=args.dry_run)
    finally:
        engine.dispose()
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{result.blobs} blobs, {result.referenced} digests referenced; {verb} "
          f"{len(result.deleted)} orphans ({result.deleted_bytes} bytes), kept "
          f"{result.kept_young} younger than {args.grace:g} s, "
          f"{result.incoming_removed} stale temporary files")
    return 0


def _add_connection_args(p) -> None:
    p.add_argument("--url", default=None, help="marketplace URL (default: $MARKETPLACE_URL)")
    p.add_argument("--token", default=None,
                   help="hub API token (default: $MARKET_TOKEN or $JUPYTERHUB_API_TOKEN)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="market", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--var-dir", type=Path, default=default_var_dir(),
                        help="state directory (default: $MARKET_VAR_DIR or ./var)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="start the platform in the foreground (Ctrl-C stops it)")
    p.add_argument("--port", type=int, default=int(os.environ.get("MARKET_HUB_PORT", 8000)))
    p.add_argument("--no-seed", action="store_true", help="do not create the demo accounts")
    p.set_defaults(func=cmd_run)

    db = sub.add_parser("db", help="service database").add_subparsers(dest="db", required=True)
    p = db.add_parser("upgrade", help="apply pending migrations")
    p.add_argument("--db-url", default=os.environ.get("MARKET_DB_URL"))
    p.set_defaults(func=cmd_db_upgrade)

    p = sub.add_parser("validate", help="check a product bundle; reports every problem at once")
    p.add_argument("dir", type=Path)
    p.add_argument("--price-min", type=int, default=10)
    p.add_argument("--price-max", type=int, default=50)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("new", help="start a product from a template")
    p.add_argument("--kind", required=True, choices=["tool", "application", "data"])
    p.add_argument("--dir", type=Path, default=Path("."), help="parent directory")
    p.add_argument("name")
    p.set_defaults(func=cmd_new)

    p = sub.add_parser("publish", help="submit a bundle directory as a new version")
    p.add_argument("dir", type=Path)
    _add_connection_args(p)
    p.add_argument("--accept-terms", action="store_true",
                   help="accept the sharing agreement without the prompt")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("verify", help="check a downloaded file, an order or an entry against "
                       "the log")
    p.add_argument("what_or_file", metavar="FILE | order | entry",
                   help="a downloaded file, the word 'order' followed by its id, or the word "
                   "'entry' followed by a log index (anyone may check an entry's type)")
    p.add_argument("order_id", nargs="?", help="the order id (with 'order') or the log index "
                   "(with 'entry')")
    p.add_argument("--type", help="with 'entry': the entry type it must have (e.g. order)")
    p.add_argument("--product")
    p.add_argument("--version")
    p.add_argument("--log-key", help="the log's vkey to trust (default: $MARKET_LOG_KEY)")
    p.add_argument("--proof", help="verify offline from a saved proof bundle")
    p.add_argument("--save-proof", help="save the proof bundle for offline verification")
    _add_connection_args(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("witness", help="co-sign the log's latest checkpoint after checking it")
    p.add_argument("--log", dest="url", default=None, help="marketplace URL of the log")
    p.add_argument("--token", default=None)
    p.add_argument("--state", type=Path, required=True, help="the witness's state directory")
    p.add_argument("--init", action="store_true", help="create the witness key, print its vkey")
    p.add_argument("--name", default="witness", help="the witness's key name (with --init)")
    p.add_argument("--log-key", help="pin the log's vkey (default: trust on first use)")
    p.add_argument("--every", type=float, default=None, metavar="SECONDS",
                   help="keep running: check for a new checkpoint every SECONDS and co-sign it")
    p.set_defaults(func=cmd_witness)

    log = sub.add_parser("log", help="the certification log").add_subparsers(dest="log",
                                                                              required=True)
    p = log.add_parser("fsck", help="recompute the tree from the stored entries")
    p.add_argument("--db-url", default=os.environ.get("MARKET_DB_URL"))
    p.set_defaults(func=cmd_log_fsck)

    blobs = sub.add_parser("blobs", help="the blob store").add_subparsers(dest="blobs",
                                                                         required=True)
    p = blobs.add_parser("gc", help="delete orphan blobs (no database row refers to them)")
    p.add_argument("--db-url", default=os.environ.get("MARKET_DB_URL"))
    p.add_argument("--grace", type=float, default=86400.0,
                   help="keep orphans younger than this many seconds (default 86400)")
    p.add_argument("--dry-run", action="store_true", help="report, delete nothing")
    p.set_defaults(func=cmd_blobs_gc)

    demo = sub.add_parser("demo", help="demo set-up").add_subparsers(dest="demo", required=True)
    p = demo.add_parser("seed", help="create the demo accounts, units and memberships")
    p.add_argument("--hub-url", default="http://127.0.0.1:8000")
    p.set_defaults(func=cmd_demo_seed)
    p = demo.add_parser("data", help="load units A-E's tables from the smart-meter readings")
    p.add_argument("--scale", type=float, default=float(os.environ.get("MARKET_DEMO_SCALE", 1)),
                   help="fraction of the 5,566 households (default 1; tests use 0.01)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--remote", default=os.environ.get("MARKET_SPARK_REMOTE"),
                   help="""a shared Spark Connect endpoint (default: $MARKET_SPARK_REMOTE; unset:
                   each unit's own server, found in <var-dir>/platform)""")
    p.add_argument("--data", type=Path, default=None,
                   help="the LCL data directory (default: $MARKET_LCL_DATA or ../shared/...)")
    p.set_defaults(func=cmd_demo_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .client import MarketAPIError
    from .errors import MarketError

    args = build_parser().parse_args(argv)
    if args.command == "verify":
        args.what, args.target = ((args.what_or_file, args.order_id)
                                  if args.what_or_file in ("order", "entry")
                                  else ("file", args.what_or_file))
        target = args.target or ""
        if args.what != "file" and not (target.isascii() and target.isdigit()):
            noun = "order id" if args.what == "order" else "log index"
            print(f"error: verify {args.what} needs the {noun}", file=sys.stderr)
            return 2
    try:
        return args.func(args)
    except MarketError as e:
        field = f" ({e.field})" if e.field else ""
        print(f"error{field}: {e.message}", file=sys.stderr)
        return 2
    except MarketAPIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
