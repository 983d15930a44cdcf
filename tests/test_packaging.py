"""The repository's promises about itself: dependencies in step, two-command quick start."""

import re
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_norm(r) for r in project["dependencies"]}
    wanted |= {_norm(r) for r in project["optional-dependencies"]["test"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_norm(r) for r in pip_section if not r.startswith("-e")}
    assert listed - wanted == set(), "in environment.yml only"
    assert wanted - listed == set(), "in pyproject.toml only"
    assert "python=3.11" in env["dependencies"]


def test_pins_that_matter():
    deps = {_norm(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"]}
    # nativeauthenticator 1.3.0 crashes on every login under jupyterhub 6 (statsd removed)
    assert "jupyterhub==5.5.4" in deps
    assert "jupyterhub-nativeauthenticator==1.3.0" in deps
    # a looser torch pin pulls a multi-GB CUDA build
    assert "torch==2.13.0" in deps


def test_readme_quick_start_is_two_commands():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^\s*(make \w+)\s*$", quick, re.M)
    assert commands == ["make run", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_market_cli_help():
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "market"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    for command in ("run", "db", "demo"):
        assert command in out


def test_kernelspec_installed():
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "jupyter"), "kernelspec", "list"],
                         capture_output=True, text=True, check=True).stdout
    assert "grid-python" in out
