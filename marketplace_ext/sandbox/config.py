"""The sandbox's limits, as traitlets configuration.

:class:`SandboxConfig` holds the defaults every sandboxed process gets (runs, model-to-data
runs, warm predict kernels, JupyterLab kernels). Set them like any traitlets option, e.g. in
``hub_config/marketplace_config.py``::

    c.SandboxConfig.memory_limit = 8 * 2**30
    c.SandboxConfig.cpu_limit = 3600

They are plain numbers (bytes, seconds, a count); 0 means "no limit" for that resource.
"""

from __future__ import annotations

from traitlets import Integer
from traitlets.config import Configurable

from .limits import Limits


class SandboxConfig(Configurable):
    """Default limits of every sandbox (see docs/sandbox.md)."""

    memory_limit = Integer(
        Limits.memory,
        help="""Memory of a sandbox in bytes: each process's address space (RLIMIT_AS: an
        allocation beyond it fails with MemoryError), and the resident memory of all of the
        sandbox's processes together, which the runner samples while a run executes. A kernel
        that imports torch and pyspark maps about 1 GiB. 0: no limit.""",
    ).tag(config=True)

    cpu_limit = Integer(
        Limits.cpu_seconds,
        help="""CPU seconds a sandbox may use, summed over its processes (the runner samples
        it; each process also gets RLIMIT_CPU, so a lone spinner gets SIGXCPU). Wall time is
        the run's own timeout. 0: no limit.""",
    ).tag(config=True)

    max_processes = Integer(
        Limits.processes,
        help="""Processes and threads (RLIMIT_NPROC, counted by the kernel per account, so a
        unit's concurrent sandboxes share it; the runner also counts each sandbox's own). A
        fork bomb ends here. Spark's gRPC client and torch start dozens of threads: keep it
        in the hundreds. 0: no limit.""",
    ).tag(config=True)

    disk_limit = Integer(
        Limits.disk_bytes,
        help="""Bytes a run may store in its working directory and its /tmp together (the
        runner measures them while the run executes). 0: no limit.""",
    ).tag(config=True)

    max_file_size = Integer(
        Limits.file_size,
        help="""The largest file a sandboxed process may write (RLIMIT_FSIZE: a larger write
        fails with 'File too large'). 0: no limit.""",
    ).tag(config=True)

    def limits(self) -> Limits:
        return Limits(memory=self.memory_limit, cpu_seconds=self.cpu_limit,
                      processes=self.max_processes, disk_bytes=self.disk_limit,
                      file_size=self.max_file_size)
