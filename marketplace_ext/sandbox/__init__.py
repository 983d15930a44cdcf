"""How code the platform did not write runs: the sandbox.

Product runs, model-to-data runs, warm predict kernels, product environment builds and the
kernels of users' JupyterLab servers all run in one: an unprivileged account
(``gds-run-<unit>``, see :mod:`marketplace_ext.accounts`), fresh user, PID, mount, IPC, UTS and
network namespaces (bubblewrap), a filesystem view of only what the code needs, no network but
a relay to its unit's data platform, and rlimits plus the runner's own sampling for memory, CPU
time, processes and disk. See docs/sandbox.md.

- :mod:`.spec`: what a sandbox is and the command that makes it;
- :mod:`.launch` / :mod:`.inside` / :mod:`.relay`: its outer launcher, its first process and
  the Spark relay between them;
- :mod:`.workspace`: a run's directories (bundle read-only, work dir the account's) and spec;
- :mod:`.limits` / :mod:`.config`: the limits and their configuration;
- :mod:`.usage`: sampling a sandbox's processes and disk against its limits;
- :mod:`.procs`: finding and killing every process of a run;
- :mod:`.files`: preparing a sandbox's directories and reading its results safely.

This package is imported by every sandboxed process's launcher: keep its imports light.
"""
