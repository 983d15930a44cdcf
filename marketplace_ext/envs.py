"""Per-product Python environments: a product that ships a ``requirements.txt`` gets its own
virtual environment and kernelspec, built once (when the version is approved) and cached by the
hash of its normalised requirements.

The requirements of an uploaded bundle are untrusted, so :func:`parse_requirements` accepts only
plain package requirements (name, extras, version specifiers, markers, comments): no pip
options (``-r``, ``-e``, ``--index-url``, ``--hash``...), no URLs, direct references or local
paths. Packages come from the index the operator configured for pip, as binary wheels only
(``--only-binary=:all:``): an sdist would run its ``setup.py`` at build time, in the service's
account, before any review of what it does.

The build runs in the sandbox (:mod:`marketplace_ext.sandbox`), as the account ``gds-envbuild``
(nobody's user, no unit's), seeing only the base interpreter, the new environment (read-write),
a /tmp of its own and the local package index pip is configured with. Unlike a run it keeps the
host's network, because pip needs the package index; wheels only still means nothing of a
package runs while it is installed, but the final kernel check imports it, and a wheel's
``.pth`` file runs then, sandboxed. The finished environment is handed to root: runs see it
read-only.

An environment inherits the service's own packages (pandas, pyspark, torch, ipykernel...) and
installs only what they lack or pin differently. ``venv --system-site-packages`` cannot do this
when the service itself runs in a virtual environment (the new venv would see the *interpreter's*
site-packages, not the service venv's), so the venv is created bare and a ``.pth`` file adds the
base python's site directories *after* its own: its packages shadow the base's, the base is
never modified, and pip (the base's, run by the env's python) sees the base's packages as
installed and skips them.

Layout under ``root``::

    envs/<digest>/venv/              the virtual environment (built as gds-envbuild, then root's)
    envs/<digest>/requirements.txt   the normalised requirements (a record; pip gets argv)
    envs/<digest>/build.log          every command of the last build and its output
    envs/<digest>/state.json         ready | failed, written last and atomically
    locks/<digest>.lock              flock: one build (or removal) of a digest at a time
    share/jupyter/kernels/<name>/    the kernelspec (papermill finds it through JUPYTER_PATH)

A venv is not relocatable (console scripts carry absolute paths), so it is built in place and
the atomic step is ``state.json``: an environment is ready only once that says so. A build that
died half-way leaves no state and counts as missing; the next build starts it afresh.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .errors import InvalidField
from .sandbox.files import account_ids, give, owned_dir
from .sandbox.limits import Limits
from .sandbox.spec import SandboxSpec, launcher_argv

log = logging.getLogger(__name__)

MAX_REQUIREMENTS = 100
MAX_REQUIREMENTS_BYTES = 16 * 2**10
STATES: tuple[str, ...] = ("missing", "building", "ready", "failed")
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
KERNEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
# venv creation and the kernel check take a second; these only stop a wedged process
STEP_TIMEOUT = 120.0
LOG_TAIL_LINES = 30
LOG_TAIL_CHARS = 4000
PTH_NAME = "zz_grid_market_base.pth"  # processed after the env's own .pth files
BUILD_ACCOUNT = "gds-envbuild"  # runs pip: nobody's user account, no unit's
PROVISIONER = "grid-sandbox-provisioner"  # kernels of an environment start in the sandbox
# the service's secrets, as marketplace_ext.runner strips them from a kernel's environment
# (repeated, not imported: bundle validation may use this module without the runner's
# database imports; tests/test_envs.py keeps the two in step)
SECRET_ENV_PREFIXES: tuple[str, ...] = ("JUPYTERHUB_", "MARKET_", "CONFIGPROXY_")
SECRET_ENV_WORDS: tuple[str, ...] = ("TOKEN", "SECRET", "PASSWORD")

# pip pulls a comment off a line at a '#' that starts the line or follows whitespace
_COMMENT_RE = re.compile(r"(^|\s)#.*$")
_OPTION_RE = re.compile(r"(^|\s)-")
_PATH_RE = re.compile(r"^(\.|/|~)|\.(whl|zip|tar|tar\.gz|tgz|tar\.bz2|tar\.xz)$", re.I)


class RequirementsError(InvalidField, ValueError):
    """A requirements file the marketplace will not install; ``problems`` lists
    ``(line number, message)`` for every refused line (line 0: the file as a whole)."""

    def __init__(self, problems: list[tuple[int, str]]):
        if not problems:
            raise ValueError("RequirementsError needs at least one problem")
        self.problems = list(problems)
        lines = [f"line {n}: {msg}" if n else msg for n, msg in self.problems]
        text = lines[0] if len(lines) == 1 else (
            f"{len(lines)} problems in the requirements:\n" + "\n".join(f"- {x}" for x in lines))
        super().__init__(text, "requirements")


def _line_problem(line: str) -> str | None:
    """Why ``line`` (comment stripped, not blank) is refused, before packaging parses it."""
    if any(not 32 <= ord(c) < 127 for c in line):
        return f"{line!r} contains characters other than printable ASCII"
    if line.endswith("\\"):
        return f"{line!r} continues on the next line; write each requirement on one line"
    if _OPTION_RE.search(line):
        return (f"{line!r} is or carries a pip option; only package requirements (name, extras, "
                "version, markers) are allowed: packages come from the marketplace's index")
    if "://" in line or _PATH_RE.search(line.split(";")[0].strip()):
        return (f"{line!r} names a URL, file or directory; name the package on the index "
                "instead (e.g. 'requests>=2.31')")
    return None


def _normalise(req: Requirement) -> str:
    extras = f"[{','.join(sorted(canonicalize_name(e) for e in req.extras))}]" if req.extras else ""
    marker = f"; {req.marker}" if req.marker else ""
    return f"{canonicalize_name(req.name)}{extras}{req.specifier}{marker}"


def parse_requirements(text: str, *, max_requirements: int = MAX_REQUIREMENTS,
                       max_bytes: int = MAX_REQUIREMENTS_BYTES) -> list[str]:
    """The requirements of a ``requirements.txt``, normalised (canonical names, sorted extras
    and specifiers) and sorted, so equal sets hash alike.

    Raises :class:`RequirementsError` naming every refused line: pip options, URLs, direct
    references (``name @ url``), local paths and archives, line continuations, non-ASCII text,
    unparsable lines, a package listed twice, more than ``max_requirements`` requirements or a
    file over ``max_bytes``.
    """
    if not isinstance(text, str):
        raise RequirementsError([(0, "the requirements must be text")])
    size = len(text.encode("utf-8", errors="replace"))
    if size > max_bytes:
        raise RequirementsError([(0, f"the requirements file is {size} bytes; at most "
                                     f"{max_bytes} are accepted")])
    problems: list[tuple[int, str]] = []
    seen: dict[tuple[str, str], int] = {}
    out: list[str] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = _COMMENT_RE.sub("", raw).strip()
        if not line:
            continue
        why = _line_problem(line)
        if why is None:
            try:
                req = Requirement(line)
            except InvalidRequirement as e:
                why = f"{line!r} is not a package requirement: {str(e).splitlines()[0]}"
            else:
                if req.url:
                    why = (f"{line!r} is a direct reference (name @ url); name a version on the "
                           "index instead")
                else:
                    key = (canonicalize_name(req.name), str(req.marker or ""))
                    if key in seen:
                        why = (f"{req.name!r} is already required on line {seen[key]}; combine "
                               "the specifiers on one line")
                    else:
                        seen[key] = n
                        out.append(_normalise(req))
        if why:
            problems.append((n, why))
    if len(out) > max_requirements:
        problems.append((0, f"the file lists {len(out)} requirements; at most "
                            f"{max_requirements} are accepted"))
    if problems:
        raise RequirementsError(problems)
    return sorted(out)


def requirements_digest(reqs: list[str], python_version: str | None = None) -> str:
    """The sha256 (hex) identifying an environment: the normalised requirements (as
    :func:`parse_requirements` returns them) and the base interpreter's ``major.minor``
    (default: this interpreter's)."""
    version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    body = f"python {version}\n" + "".join(f"{r}\n" for r in sorted(reqs))
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class EnvStatus:
    """Where an environment stands. ``error`` (one line) and ``log_tail`` (the end of the
    build log) are set for ``failed``; ``finished_at`` and ``seconds`` for a finished build."""

    digest: str
    state: str  # one of STATES
    kernel_name: str
    requirements: tuple[str, ...] = ()
    error: str | None = None
    log_tail: str | None = None
    finished_at: datetime | None = None
    seconds: float | None = None

    def to_dict(self) -> dict:
        return {"digest": self.digest, "state": self.state, "kernel_name": self.kernel_name,
                "requirements": list(self.requirements), "error": self.error,
                "log_tail": self.log_tail, "seconds": self.seconds,
                "finished_at": self.finished_at.isoformat() if self.finished_at else None}


class _StepFailed(Exception):
    """A build step failed; the message is the status's one-line error."""


def without_secrets(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` without the hub's and the service's secrets: what product code (kernels,
    pip, a wheel's .pth file) may see."""
    return {k: v for k, v in environ.items()
            if not k.startswith(SECRET_ENV_PREFIXES)
            and not any(w in k.upper() for w in SECRET_ENV_WORDS)}


def _clean_env() -> dict[str, str]:
    """The service's environment without its secrets: pip and the kernel check run code from
    the packages being installed (a wheel's .pth file runs at every interpreter start)."""
    env = without_secrets(dict(os.environ))
    env.pop("VIRTUAL_ENV", None)
    # the service user's ~/.local packages would differ from what a run's kernel sees
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


_pip_paths: list[str] | None = None


def _pip_local_paths() -> list[str]:
    """The local paths pip is configured with (``find-links``, ``file://`` indexes, a
    constraints file), which the build's sandbox must see: from ``pip config list`` and the
    ``PIP_*`` environment."""
    global _pip_paths
    if _pip_paths is None:
        text = " ".join(v for k, v in os.environ.items() if k.startswith("PIP_"))
        try:
            text += " " + subprocess.run(
                [sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                text=True, timeout=STEP_TIMEOUT, env=_clean_env()).stdout
        except (OSError, subprocess.SubprocessError):
            pass
        found = re.findall(r"(?:file://)?(/[^\s'\"]+)", text)
        _pip_paths = [p for p in dict.fromkeys(found)
                      if os.path.exists(p) and not p.startswith(("/usr/", "/etc/"))]
    return _pip_paths


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _tail(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-LOG_TAIL_LINES:])[-LOG_TAIL_CHARS:]


def _last_error(tail: str) -> str:
    lines = [x.strip() for x in tail.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("ERROR:")]
    return (errors or lines or ["(no output)"])[-1][:500]


class EnvironmentBuilder:
    """Builds, reports and removes the environments under ``root``.

    ``build`` blocks for as long as pip takes (up to ``pip_timeout`` seconds): call it in a
    worker thread, never on the event loop; ``status`` only reads a few small files.
    ``base_python`` is the interpreter whose packages every environment inherits (the service's
    own by default) and must have pip and ipykernel. Runs use an environment's kernel only when
    ``JUPYTER_PATH`` includes :attr:`jupyter_dir` (see :meth:`jupyter_path_env`).
    """

    def __init__(self, root: Path, *, base_python: str = sys.executable,
                 pip_timeout: float = 900, kernel_prefix: str = "grid-env-",
                 sandbox: bool = True, limits: Limits | None = None):
        if not KERNEL_NAME_RE.match(kernel_prefix):
            raise ValueError(f"kernel_prefix {kernel_prefix!r} must be lower-case letters, "
                             "digits, '.', '_' or '-' (a kernelspec name)")
        self.root = Path(root).absolute()
        self.base_python = base_python
        self.pip_timeout = pip_timeout
        self.kernel_prefix = kernel_prefix
        self.jupyter_dir = self.root / "share" / "jupyter"
        self.kernels_dir = self.jupyter_dir / "kernels"
        self._base: dict | None = None
        self.builds_run = 0  # builds this object actually ran (not cached or reused): for tests
        self.sandbox = sandbox  # False: steps run as the service (tests of the build only)
        self.limits = limits or Limits()

    # --- names and paths

    def _check(self, digest: str) -> str:
        if not isinstance(digest, str) or not DIGEST_RE.match(digest):
            raise ValueError(f"{digest!r} is not an environment digest (64 hex digits)")
        return digest

    def kernel_name(self, digest: str) -> str:
        """The kernelspec name of the environment ``digest``."""
        return self.kernel_prefix + self._check(digest)[:12]

    def env_dir(self, digest: str) -> Path:
        return self.root / "envs" / self._check(digest)

    def python(self, digest: str) -> Path:
        """The environment's interpreter."""
        return self.env_dir(digest) / "venv" / "bin" / "python"

    def jupyter_path_env(self, current: str | None = None) -> dict[str, str]:
        """``{"JUPYTER_PATH": ...}`` with :attr:`jupyter_dir` in front of ``current`` (the
        existing value, if any): merge it into the environment papermill runs in."""
        value = str(self.jupyter_dir) + (os.pathsep + current if current else "")
        return {"JUPYTER_PATH": value}

    def _lock_path(self, digest: str) -> Path:
        return self.root / "locks" / f"{digest}.lock"

    def _kernel_dir(self, digest: str) -> Path:
        return self.kernels_dir / self.kernel_name(digest)

    def base_info(self) -> dict:
        """``{"version": "3.11", "site": [...]}`` of ``base_python``: its ``major.minor`` and
        the site directories an environment inherits (asks the interpreter once)."""
        if self._base is None:
            script = ("import json, site, sys; print(json.dumps({'version': '%d.%d' % "
                      "sys.version_info[:2], 'site': site.getsitepackages()}))")
            if self.base_python == sys.executable:
                info = {"version": f"{sys.version_info.major}.{sys.version_info.minor}",
                        "site": site.getsitepackages()}
            else:
                try:
                    out = subprocess.run([self.base_python, "-c", script], capture_output=True,
                                         text=True, timeout=STEP_TIMEOUT, env=_clean_env(),
                                         check=True).stdout
                    info = json.loads(out)
                except (OSError, subprocess.SubprocessError, ValueError) as e:
                    raise RuntimeError(f"base_python {self.base_python!r} cannot be asked for "
                                       f"its version and site directories: {e}") from e
            # lib64 is often a link to lib: one entry each
            dirs = [str(Path(p).resolve()) for p in info["site"] if Path(p).is_dir()]
            info["site"] = list(dict.fromkeys(dirs))
            self._base = info
        return self._base

    def digest(self, requirements_text: str) -> str:
        """The digest of a requirements file for this builder's base interpreter (raises
        :class:`RequirementsError` like :func:`parse_requirements`)."""
        return requirements_digest(parse_requirements(requirements_text),
                                   self.base_info()["version"])

    # --- state

    def _read_state(self, digest: str) -> dict | None:
        try:
            state = json.loads((self.env_dir(digest) / "state.json").read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) else None

    def _locked_elsewhere(self, digest: str) -> bool:
        try:
            fd = os.open(self._lock_path(digest), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases the lock if we took it
        return False

    def _from_state(self, digest: str, state: dict | None) -> EnvStatus:
        name = self.kernel_name(digest)
        if state is None:
            return EnvStatus(digest, "missing", name)
        try:
            finished = state.get("finished_at")
            common = dict(
                requirements=tuple(str(r) for r in state.get("requirements") or ()),
                finished_at=datetime.fromisoformat(finished) if finished else None,
                seconds=float(state["seconds"]) if state.get("seconds") is not None else None,
            )
        except (TypeError, ValueError):  # edited or damaged by hand: rebuild it
            return EnvStatus(digest, "missing", name)
        if state.get("state") == "ready":
            # a half-removed environment is not ready, whatever its state file says
            if (self._kernel_dir(digest) / "kernel.json").is_file() and self.python(
                    digest).exists():
                return EnvStatus(digest, "ready", name, **common)
            return EnvStatus(digest, "missing", name)
        if state.get("state") == "failed":
            return EnvStatus(digest, "failed", name, error=state.get("error"),
                             log_tail=_tail(self.env_dir(digest) / "build.log"), **common)
        return EnvStatus(digest, "missing", name)

    def status(self, digest: str) -> EnvStatus:
        """``missing``, ``building`` (a build holds the lock, in any process), ``ready`` or
        ``failed`` (with the error and the end of the build log)."""
        state = self._read_state(digest)
        if state and state.get("state") == "ready":
            return self._from_state(digest, state)
        if self._locked_elsewhere(digest):
            return EnvStatus(digest, "building", self.kernel_name(digest))
        return self._from_state(digest, self._read_state(digest))

    @contextlib.contextmanager
    def _lock(self, digest: str) -> Iterator[None]:
        """Exclusive, across threads and processes (flock locks belong to the open file, and a
        dead holder's lock is released by the kernel)."""
        path = self._lock_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- build

    def build(self, requirements_text: str) -> EnvStatus:
        """Build the environment of ``requirements_text`` unless it is ready; returns its
        status (``ready`` or ``failed``). Blocking.

        Raises :class:`RequirementsError` for refused requirements (nothing is built). A build
        of the same digest running elsewhere is waited for and its result reused, a failure
        included; a failure recorded before this call is retried.
        """
        reqs = parse_requirements(requirements_text)
        digest = requirements_digest(reqs, self.base_info()["version"])
        called = datetime.now(UTC)
        with self._lock(digest):
            state = self._read_state(digest)
            current = self._from_state(digest, state)
            if current.state == "ready":
                return current
            if (current.state == "failed" and current.finished_at is not None
                    and current.finished_at >= called):
                return current  # a concurrent build of the same digest just failed
            self.builds_run += 1
            return self._build_locked(digest, reqs)

    def _build_locked(self, digest: str, reqs: list[str]) -> EnvStatus:
        env_dir, kernel_dir = self.env_dir(digest), self._kernel_dir(digest)
        shutil.rmtree(kernel_dir, ignore_errors=True)
        shutil.rmtree(env_dir, ignore_errors=True)
        env_dir.mkdir(parents=True)
        # the sandbox's account passes through (bwrap mounts the venv as it), lists nothing
        for path in (self.root, self.root / "envs", env_dir):
            os.chmod(path, 0o711)
        (env_dir / "requirements.txt").write_text("".join(f"{r}\n" for r in reqs), "utf-8")
        logfile = env_dir / "build.log"
        started, t0 = datetime.now(UTC), time.monotonic()
        record: dict = {"digest": digest, "kernel_name": self.kernel_name(digest),
                        "requirements": reqs, "base_python": self.base_python,
                        "python": self.base_info()["version"], "started_at": started.isoformat()}
        try:
            with open(logfile, "ab") as out:
                out.write(f"# environment {digest} for {self.base_python}, started "
                          f"{started.isoformat()}\n".encode())
                self._make_env(digest, reqs, out)
            self._install_kernelspec(digest)
            # built as the build account; runs (other accounts) only read it
            give(env_dir / "venv", (0, 0) if os.geteuid() == 0 else None)
            record["state"], error = "ready", None
        except _StepFailed as e:
            record["state"], error = "failed", str(e)
        except Exception as e:  # a full disk, a vanished directory...: still the reviewer's news
            log.exception("building environment %s failed", digest)
            record["state"], error = "failed", f"internal error: {type(e).__name__}: {e}"
        if error is not None:
            with contextlib.suppress(OSError), open(logfile, "a", encoding="utf-8") as out:
                out.write(f"# failed: {error}\n")
            # the half-built venv is of no use and may be large; the log stays for the review
            shutil.rmtree(kernel_dir, ignore_errors=True)
            shutil.rmtree(env_dir / "venv", ignore_errors=True)
            record["error"] = error
        record["seconds"] = round(time.monotonic() - t0, 3)
        record["finished_at"] = datetime.now(UTC).isoformat()
        _write_atomic(env_dir / "state.json", json.dumps(record, indent=1))
        status = self._from_state(digest, record)
        log.info("environment %s (%s): %s in %.1f s%s", digest[:12], ", ".join(reqs) or "-",
                 status.state, record["seconds"], f": {error}" if error else "")
        return status

    def _run(self, argv: list[str], out: BinaryIO, timeout: float, what: str, *,
             network: bool = False) -> None:
        """Run one step, in the sandbox, with its output appended to the log;
        :class:`_StepFailed` on failure. Its own session, so a timeout kills whatever it
        started too (the sandbox dies with its launcher)."""
        out.write(f"$ {shlex.join(argv)}\n".encode())
        out.flush()
        logfile = Path(out.name)
        env = _clean_env()
        command = argv
        if self.sandbox:
            command = self._sandboxed(argv, logfile.parent, network)
            env["HOME"] = "/tmp"  # pip's cache: the build's own /tmp, gone with it
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=logfile.parent,
                                start_new_session=True)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise _StepFailed(f"{what} timed out after {timeout:g} s") from None
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        if code != 0:
            out.flush()
            detail = _last_error(_tail(logfile))
            if what == "pip install" and "No matching distribution" in detail:
                detail += (" (only binary wheels are installed, so a package or dependency "
                           "published only as a source distribution is not found either)")
            raise _StepFailed(f"{what} failed (exit status {code}): {detail}")

    def _sandboxed(self, argv: list[str], env_dir: Path, network: bool) -> list[str]:
        """``argv`` wrapped in the sandbox: the venv read-write (the working directory),
        ``env_dir/tmp`` as /tmp, the base interpreter's environment and pip's local indexes
        read-only; the host's network only for ``network`` (pip)."""
        account = None
        if os.geteuid() == 0:
            from .accounts import ensure_account

            account = ensure_account(BUILD_ACCOUNT).name
        ids = account_ids(account)
        venv, tmp = env_dir / "venv", env_dir / "tmp"
        for path in (venv, tmp):
            if not path.exists():
                owned_dir(path, ids, 0o755 if path == venv else 0o700)
        base = Path(self.base_python).parent.parent
        read_only = [str(base)] if not str(base).startswith(("/usr/", sys.prefix)) else []
        if network:
            read_only += _pip_local_paths()
        spec = SandboxSpec(
            command=argv, workdir=str(venv), account=account, tmp_dir=str(tmp),
            binds=[(p, p, False) for p in dict.fromkeys(read_only)], limits=self.limits,
            network=network)
        spec_file = env_dir / "sandbox.json"
        spec.write(spec_file)
        return launcher_argv(spec_file)

    def _make_env(self, digest: str, reqs: list[str], out: BinaryIO) -> None:
        venv = self.env_dir(digest) / "venv"
        # no pip in the venv: the base's pip is on its path (below) and ensurepip costs seconds
        self._run([self.base_python, "-m", "venv", "--without-pip", str(venv)], out,
                  STEP_TIMEOUT, "creating the virtual environment")
        python = str(self.python(digest))
        purelib = venv / "purelib.txt"
        self._run([python, "-c", "import sysconfig, sys; open(sys.argv[1], 'w').write("
                   "sysconfig.get_path('purelib'))", str(purelib)], out, STEP_TIMEOUT,
                  "locating the environment's site-packages")
        site_dir = Path(purelib.read_text("utf-8"))
        purelib.unlink()
        # addsitedir, not a bare path: the base's own .pth files (editable installs) count too
        lines = [f"import site; site.addsitedir({p!r})\n" for p in self.base_info()["site"]]
        (site_dir / PTH_NAME).write_text("".join(lines), "utf-8")
        if reqs:
            # requirements as arguments, not "-r file": pip parses no options or ${VARS} there
            self._run([python, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                       "--only-binary=:all:", "--no-warn-script-location", "--progress-bar",
                       "off", "--", *reqs], out, self.pip_timeout, "pip install", network=True)
        # a pinned pyzmq, tornado or traitlets could leave an environment that cannot start a
        # kernel: better said on the review page than by every run
        self._run([python, "-c", "import ipykernel.kernelapp"], out, STEP_TIMEOUT,
                  "the kernel check (import ipykernel.kernelapp)")

    def _install_kernelspec(self, digest: str) -> None:
        name, target = self.kernel_name(digest), self._kernel_dir(digest)
        spec = {
            "argv": [str(self.python(digest)), "-m", "ipykernel_launcher", "-f",
                     "{connection_file}"],
            "display_name": f"Python 3 (product environment {digest[:12]})",
            "language": "python",
            "interrupt_mode": "message",
            "metadata": {"debugger": True, "grid_market_env": digest,
                         "kernel_provisioner": {"provisioner_name": PROVISIONER}},
        }
        self.kernels_dir.mkdir(parents=True, exist_ok=True)
        for path in (self.root / "share", self.jupyter_dir, self.kernels_dir):
            os.chmod(path, 0o711)
        tmp = Path(tempfile.mkdtemp(dir=self.kernels_dir, prefix=f".{name}."))
        try:
            (tmp / "kernel.json").write_text(json.dumps(spec, indent=1), "utf-8")
            os.chmod(tmp / "kernel.json", 0o644)
            os.chmod(tmp, 0o755)  # a run's sandbox reads it
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # --- removal

    def remove(self, digest: str) -> None:
        """Delete the environment and its kernelspec (after any build of it in progress). A
        run using its kernel at that moment loses it: remove only unreferenced digests."""
        with self._lock(digest):
            shutil.rmtree(self._kernel_dir(digest), ignore_errors=True)
            shutil.rmtree(self.env_dir(digest), ignore_errors=True)

