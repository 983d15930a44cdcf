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
    from .client import Market, MarketAPIError

    market = Market(args.url, args.token)
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
    p.add_argument("--url", default=None, help="marketplace URL (default: $MARKETPLACE_URL)")
    p.add_argument("--token", default=None,
                   help="hub API token (default: $MARKET_TOKEN or $JUPYTERHUB_API_TOKEN)")
    p.add_argument("--accept-terms", action="store_true",
                   help="accept the sharing agreement without the prompt")
    p.set_defaults(func=cmd_publish)

    demo = sub.add_parser("demo", help="demo set-up").add_subparsers(dest="demo", required=True)
    p = demo.add_parser("seed", help="create the demo accounts, units and memberships")
    p.add_argument("--hub-url", default="http://127.0.0.1:8000")
    p.set_defaults(func=cmd_demo_seed)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import MarketError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MarketError as e:
        field = f" ({e.field})" if e.field else ""
        print(f"error{field}: {e.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
