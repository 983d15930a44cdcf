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

    demo = sub.add_parser("demo", help="demo set-up").add_subparsers(dest="demo", required=True)
    p = demo.add_parser("seed", help="create the demo accounts, units and memberships")
    p.add_argument("--hub-url", default="http://127.0.0.1:8000")
    p.set_defaults(func=cmd_demo_seed)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
