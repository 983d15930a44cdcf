"""The authorization matrix's rows for the exchange's forum routes (API and pages), merged into
test_authz_matrix's EXPECTED and BUILDERS. Same unit is ``a``, another unit ``b``."""

from __future__ import annotations

from authz_objects import Builder, Cell, R  # noqa: F401

EXPECTED: dict[tuple[str, str], dict[str, Cell]] = {}

BUILDERS: dict[tuple[str, str], Builder] = {}
