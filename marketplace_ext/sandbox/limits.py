"""A sandbox's limits (defaults: :class:`marketplace_ext.sandbox.config.SandboxConfig`) and how
a run that exceeds one is told so."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Limits:
    """One sandbox's limits; 0 means unlimited. See :class:`SandboxConfig` for each one."""

    memory: int = 4 * 2**30
    cpu_seconds: int = 3600
    processes: int = 512
    disk_bytes: int = 4 * 2**30
    file_size: int = 2 * 2**30

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> Limits:
        known = {k: int(v) for k, v in (data or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


# how each limit is named in messages: the trait an operator tunes
TRAIT_OF: dict[str, str] = {
    "memory": "memory_limit", "cpu_seconds": "cpu_limit", "processes": "max_processes",
    "disk_bytes": "disk_limit", "file_size": "max_file_size",
}
WHAT_OF: dict[str, str] = {
    "memory": "memory limit", "cpu_seconds": "CPU time limit", "processes": "process limit",
    "disk_bytes": "disk limit", "file_size": "file size limit",
}


def human(kind: str, value: int) -> str:
    """A limit's value as an operator would write it: '2 GiB', '600 s', '512'."""
    if kind == "cpu_seconds":
        return f"{value} s"
    if kind == "processes":
        return str(value)
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size and value % (size // 16 or 1) == 0:
            text = f"{value / size:.2f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
    return f"{value} bytes"


def limit_message(kind: str, limits: Limits, detail: str = "", who: str = "run") -> str:
    """'the run exceeded its memory limit (sandbox memory_limit = 2 GiB)' and a detail."""
    value = getattr(limits, kind)
    text = (f"the {who} exceeded its {WHAT_OF[kind]} (sandbox {TRAIT_OF[kind]} = "
            f"{human(kind, value)})")
    return f"{text}: {detail}" if detail else text


