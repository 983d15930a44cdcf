"""Per-product environments: what a requirements file may say, the digest that caches it, and
real builds with pip (one tiny wheel from the configured index) whose kernel papermill runs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import nbformat
import pytest

from marketplace_ext.envs import (
    MAX_REQUIREMENTS_BYTES,
    EnvironmentBuilder,
    RequirementsError,
    _clean_env,
    parse_requirements,
    requirements_digest,
)
from marketplace_ext.errors import InvalidField
from marketplace_ext.sandbox.limits import Limits
from marketplace_ext.sandbox.spec import launcher_argv
from marketplace_ext.sandbox.workspace import Workspace, identity, kernel_paths, sandbox_env

pytest_plugins = ["sandbox_helpers"]

# small, pure-python, a wheel on PyPI and not in the service's environment
EXTRA = "inflection==0.5.1"
MISSING = "grid-market-no-such-pkg-xyz==1.0"

# --- parsing -----------------------------------------------------------------------------------


def test_plain_requirements_are_normalised_and_sorted():
    text = """
# a comment line
Requests[Socks,security] >= 2.31, <3   # trailing comment
python_dateutil
numpy==1.26.4; python_version < "3.12"

scikit-learn~=1.4
"""
    assert parse_requirements(text) == [
        'numpy==1.26.4; python_version < "3.12"',
        "python-dateutil",
        "requests[security,socks]<3,>=2.31",
        "scikit-learn~=1.4",
    ]
    assert parse_requirements("") == []
    assert parse_requirements("# only comments\n\n") == []


@pytest.mark.parametrize("line, says", [
    ("-r other.txt", "pip option"),
    ("--requirement=other.txt", "pip option"),
    ("-e .", "pip option"),
    ("-e git+https://example.org/x.git#egg=x", "pip option"),
    ("--index-url https://evil.example/simple", "pip option"),
    ("-i https://evil.example/simple", "pip option"),
    ("--extra-index-url https://evil.example/simple", "pip option"),
    ("-f /tmp/wheels", "pip option"),
    ("--find-links=/tmp/wheels", "pip option"),
    ("--trusted-host evil.example", "pip option"),
    ("-c constraints.txt", "pip option"),
    ("--pre", "pip option"),
    ("requests==2.31.0 --hash=sha256:0123456789abcdef", "pip option"),
    ("requests==2.31.0 --config-settings=x=y", "pip option"),
    ("pkg @ https://evil.example/pkg-1.0-py3-none-any.whl", "URL"),
    ("pkg @ file:///tmp/pkg-1.0-py3-none-any.whl", "URL"),
    ("git+https://github.com/owner/repo", "URL"),
    ("https://evil.example/pkg.tar.gz", "URL"),
    ("./local/dir", "file or directory"),
    ("/abs/pkg-1.0-py3-none-any.whl", "file or directory"),
    ("pkg-1.0.tar.gz", "file or directory"),
    ("pkg-1.0-py3-none-any.whl", "file or directory"),
    ("~/src/pkg", "file or directory"),
    ("requests==2.31.0 \\", "next line"),
    ("caf\u00e9==1.0", "printable ASCII"),
    ("requests==${VERSION}", "not a package requirement"),
    ("not a requirement!", "not a package requirement"),
    ("requests===", "not a package requirement"),
])
def test_refused_lines_are_named(line, says):
    with pytest.raises(RequirementsError) as info:
        parse_requirements(f"six==1.17.0\n# fine so far\n{line}\n")
    err = info.value
    assert err.problems == [(3, err.problems[0][1])]
    assert "line 3" in str(err) and repr(line) in str(err) and says in str(err)


def test_every_refused_line_is_reported_at_once():
    text = "-e .\nsix\nhttps://x.example/a.whl\nSix>=1\nok-pkg\n--pre\n"
    with pytest.raises(RequirementsError) as info:
        parse_requirements(text)
    assert [n for n, _ in info.value.problems] == [1, 3, 4, 6]
    assert "4 problems" in str(info.value)
    assert "already required on line 2" in str(info.value)


def test_same_package_under_different_markers_is_allowed():
    reqs = parse_requirements('foo<2; python_version < "3.11"\nfoo>=2; python_version >= "3.11"')
    assert len(reqs) == 2


def test_limits():
    with pytest.raises(RequirementsError, match=f"at most {MAX_REQUIREMENTS_BYTES}"):
        parse_requirements("# " + "x" * MAX_REQUIREMENTS_BYTES)
    with pytest.raises(RequirementsError, match="lists 4 requirements; at most 3"):
        parse_requirements("a\nb\nc\nd\n", max_requirements=3)
    with pytest.raises(RequirementsError, match="must be text"):
        parse_requirements(b"six")  # type: ignore[arg-type]


def test_requirements_error_is_a_400_and_a_value_error():
    with pytest.raises(RequirementsError) as info:
        parse_requirements("-e .")
    assert isinstance(info.value, ValueError) and isinstance(info.value, InvalidField)
    assert info.value.to_dict()["field"] == "requirements"
    assert info.value.status == 400


def test_digest_is_stable_under_order_comments_case_and_spelling():
    a = parse_requirements("six==1.17.0\nRequests[socks,security]>=2.31,<3\n")
    b = parse_requirements("# deps\nrequests [Security, SOCKS] <3 , >=2.31  # http\n\n"
                           "SIX == 1.17.0")
    assert a == b
    assert requirements_digest(a) == requirements_digest(list(reversed(b)))
    assert requirements_digest(a) != requirements_digest(parse_requirements("six==1.16.0"))
    assert requirements_digest(a, "3.11") != requirements_digest(a, "3.12")
    assert len(requirements_digest([])) == 64


def test_names_and_paths(tmp_path):
    builder = EnvironmentBuilder(tmp_path)
    digest = builder.digest("six")
    assert builder.kernel_name(digest) == "grid-env-" + digest[:12]
    assert builder.jupyter_path_env() == {"JUPYTER_PATH": str(tmp_path / "share" / "jupyter")}
    assert builder.jupyter_path_env("/a") == {
        "JUPYTER_PATH": f"{tmp_path / 'share' / 'jupyter'}{os.pathsep}/a"}
    for bad in ("../../etc", "ABC", digest[:12], digest + "0"):
        with pytest.raises(ValueError, match="not an environment digest"):
            builder.status(bad)
    with pytest.raises(ValueError, match="kernel_prefix"):
        EnvironmentBuilder(tmp_path, kernel_prefix="Bad Name/")
    assert builder.status(digest).state == "missing"


def test_secrets_stay_out_of_the_build(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-secret")
    monkeypatch.setenv("MARKET_DB_URL", "postgresql://u:p@db/market")
    monkeypatch.setenv("SOME_PASSWORD", "pw")
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    env = _clean_env()
    assert not {"JUPYTERHUB_API_TOKEN", "MARKET_DB_URL", "SOME_PASSWORD"} & set(env)
    assert env["PIP_INDEX_URL"] == "https://mirror.example/simple"  # the operator's pip config
    assert env["PYTHONNOUSERSITE"] == "1"


# --- real builds -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(reachable_module_tmp):
    """One real build of EXTRA (plus six, which the service already has), asked for by two
    builders at once with differently written but equal requirements, watched by status()."""
    root = reachable_module_tmp / "envs"
    builders = [EnvironmentBuilder(root), EnvironmentBuilder(root)]
    texts = [f"{EXTRA}\nsix==1.17.0\n", f"# same set\nSIX==1.17.0\n{EXTRA.upper()}  # x\n"]
    digest = builders[0].digest(texts[0])
    results: list = [None, None]

    def run(i: int) -> None:
        results[i] = builders[i].build(texts[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    seen: set[str] = set()
    start = time.monotonic()
    for t in threads:
        t.start()
    deadline = time.monotonic() + 900  # a bound for the poll (pip), not a timing claim
    while any(t.is_alive() for t in threads):
        assert time.monotonic() < deadline, "the builds did not end"
        seen.add(builders[0].status(digest).state)
        time.sleep(0.02)
    for t in threads:
        t.join()
    return {"root": root, "builder": builders[0], "builders": builders, "digest": digest,
            "results": results, "seen": seen, "wall": time.monotonic() - start}


def test_concurrent_builds_of_one_digest_run_pip_once(built):
    first, second = built["results"]
    assert first.state == second.state == "ready", first.error or second.error
    assert first.digest == second.digest == built["digest"]
    assert first.requirements == ("inflection==0.5.1", "six==1.17.0")
    assert sum(b.builds_run for b in built["builders"]) == 1
    assert "building" in built["seen"] and "failed" not in built["seen"]
    log = (built["builder"].env_dir(built["digest"]) / "build.log").read_text()
    assert log.count(" -m pip install ") == 1
    print(f"build took {first.seconds} s ({built['wall']:.1f} s with the waiting builder)")


def test_a_ready_environment_is_not_built_again(built):
    builder, digest = built["builder"], built["digest"]
    env_dir = builder.env_dir(digest)
    before = {p.name: p.stat().st_mtime_ns for p in env_dir.iterdir()}
    again = builder.build(f"six==1.17.0\n{EXTRA}")
    fresh = EnvironmentBuilder(built["root"])  # as another service process would
    assert fresh.build(EXTRA + "\nsix==1.17.0").state == "ready"
    assert again == built["results"][0] == fresh.status(digest)
    assert fresh.builds_run == 0 and sum(b.builds_run for b in built["builders"]) == 1
    assert {p.name: p.stat().st_mtime_ns for p in env_dir.iterdir()} == before


def test_the_environment_adds_to_the_service_packages_without_changing_them(built):
    builder, digest = built["builder"], built["digest"]
    python = builder.python(digest)
    code = ("import inflection, pandas, six, sys; "
            "print(sys.prefix, inflection.__file__, pandas.__file__, six.__file__, sep='\\n')")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True,
                         timeout=60).stdout.split("\n")
    venv = str(builder.env_dir(digest) / "venv")
    assert out[0] == venv
    assert out[1].startswith(venv)  # installed into the environment
    base = str(Path(sys.prefix))
    assert out[2].startswith(base) and out[3].startswith(base)  # inherited, not reinstalled
    service = subprocess.run([sys.executable, "-c", "import inflection"], capture_output=True,
                             timeout=60)
    assert service.returncode != 0, "the build leaked a package into the service's environment"
    spec = json.loads((builder.kernels_dir / builder.kernel_name(digest) / "kernel.json")
                      .read_text())
    assert spec["argv"][:3] == [str(python), "-m", "ipykernel_launcher"]


def test_papermill_runs_a_notebook_in_the_environment_kernel(built, reachable_tmp):
    builder, digest = built["builder"], built["digest"]
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("name = 'x'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "import os, sys, inflection, pandas\n"
        "print(sys.prefix)\n"
        "print(inflection.camelize(name))\n"
        "print(pandas.DataFrame({'a': [1]}).a.sum())\n"
        "print(os.access(sys.prefix, os.W_OK))")]
    # the notebook was written for grid-python; the runner's kernel_for overrides the name
    nb.metadata["kernelspec"] = {"name": "grid-python", "display_name": "Python 3",
                                 "language": "python"}
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as zf:
        zf.writestr("main.ipynb", nbformat.writes(nb))
    # what the runner does: the run's directories, the sandbox, the environment read-only
    space = Workspace(reachable_tmp / "run-1", *identity("envtest"))
    space.create(bundle.getvalue())
    kernel = builder.kernel_name(digest)
    (space.control / "job.json").write_text(json.dumps({
        "notebook": "main.ipynb", "output": ".market-run/output.ipynb", "html": None,
        "result": ".market-run/result.json", "kernel": kernel,
        "parameters": {"name": "grid_market"}, "context": {}}))
    space.seal()
    env = sandbox_env(builder.jupyter_path_env(os.environ.get("JUPYTER_PATH")), space.root,
                      space.control / "runtime")
    spec = space.spec([sys.executable, "-P", "-m", "marketplace_ext.run_notebook",
                       str(space.control / "job.json")], env, Limits(), kernel_paths(kernel, env))
    spec.write(space.spec_file)
    proc = subprocess.run(launcher_argv(space.spec_file), cwd=space.root, env=env,
                          capture_output=True, text=True, timeout=120)
    result = json.loads((space.control / "result.json").read_text())
    assert result["ok"], (result, proc.stdout, proc.stderr)
    out = nbformat.read(space.control / "output.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in out.cells if c.cell_type == "code"
                   for o in c.outputs)
    # the environment's kernel ran, and could not change its environment
    assert text.split() == [str(builder.env_dir(digest) / "venv"), "GridMarket", "1", "False"]


def test_a_failed_build_reports_pip_and_installs_no_kernel(reachable_tmp):
    builder = EnvironmentBuilder(reachable_tmp)
    status = builder.build(f"six\n{MISSING}\n")
    assert status.state == "failed"
    assert status.error.startswith("pip install failed (exit status 1)")
    assert MISSING in status.error
    assert "No matching distribution found for " + MISSING in status.log_tail
    assert builder.status(status.digest) == status
    assert not (builder.kernels_dir / builder.kernel_name(status.digest)).exists()
    assert not (builder.env_dir(status.digest) / "venv").exists()
    # asked again (a reviewer's retry) it is built again, not answered from the record
    assert builder.build(f"{MISSING}\nsix").state == "failed"
    assert builder.builds_run == 2
    builder.remove(status.digest)
    assert builder.status(status.digest).state == "missing"


def test_pip_timeout_fails_the_build(reachable_tmp):
    builder = EnvironmentBuilder(reachable_tmp, pip_timeout=0.05)
    status = builder.build(EXTRA)
    assert status.state == "failed"
    assert status.error == "pip install timed out after 0.05 s"
    assert "timed out" in status.log_tail


def test_empty_requirements_build_and_remove(reachable_tmp):
    builder = EnvironmentBuilder(reachable_tmp)
    status = builder.build("# nothing beyond the platform\n")
    assert status.state == "ready", status.error
    kernel_dir = builder.kernels_dir / status.kernel_name
    assert (kernel_dir / "kernel.json").is_file()
    builder.remove(status.digest)
    assert builder.status(status.digest).state == "missing"
    assert not kernel_dir.exists() and not builder.env_dir(status.digest).exists()
