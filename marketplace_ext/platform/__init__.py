"""The data middle platform: one Spark Connect endpoint per unit, its tables, the desensitized
views data products publish, and the guarded SQL subscribers run on them.

One concern per module:

- :mod:`.server` starts and stops one embedded Spark Connect server (``market run``, tests).
- :mod:`.sessions` maps a unit to its endpoint and Hive database and holds the Connect
  sessions (:class:`~.sessions.PlatformEndpoints`).
- :mod:`.loader` loads a unit's pandas frames as tables, staged and swapped all or nothing.
- :mod:`.policy` checks a desensitization policy and compiles it into a view;
  :mod:`.keys` holds the secret behind its pseudonyms and noise.
- :mod:`.guard` is the allow-list SQL guard; :mod:`.query` runs a checked query;
  :mod:`.values` turns Spark values into JSON; :mod:`.export` writes a view as CSV/Parquet.
- :mod:`.facade` has :class:`DataPlatform`, the small facade the service talks to.

Every Spark call is **blocking** (gRPC round trips, sometimes seconds or minutes): the
Tornado service calls DataPlatform's methods in an executor, never on the IO loop.

Expected failures raise the exceptions of :mod:`marketplace_ext.errors`: bad input
:class:`~marketplace_ext.errors.InvalidField` (with the field at fault), a refused table
:class:`~marketplace_ext.errors.Forbidden`, an unreachable platform
:class:`~marketplace_ext.errors.UpstreamUnavailable` (naming the endpoint, no stack trace).
"""

from __future__ import annotations

from .common import OBJECT_NAME_RE, UNIT_SLUG_RE, check_unit
from .facade import DataPlatform
from .guard import check_sql
from .policy import POLICY_RULES, validate_policy
from .server import PlatformStartError, SparkConnectServer

__all__ = [
    "OBJECT_NAME_RE",
    "POLICY_RULES",
    "UNIT_SLUG_RE",
    "DataPlatform",
    "PlatformStartError",
    "SparkConnectServer",
    "check_sql",
    "check_unit",
    "validate_policy",
]
