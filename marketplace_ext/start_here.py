"""The "Start here" folder of every user's JupyterLab home.

Every spawn (:class:`marketplace_ext.spawner.GridSpawner`) runs ``python -m
marketplace_ext.start_here HOME`` *as the user's own account* (never as root inside a home the
user controls: a planted symlink must not make root write elsewhere). It puts in
``HOME/Start here/``:

- ``Welcome.ipynb``: the client and the widgets on the user's own unit data;
- ``Publish a product.ipynb``: ``market new``, ``market validate`` and publishing explained;
- ``Federated learning/``: the guided notebooks of ``fl_notebooks/`` and their README.

A refresh never overwrites the user's edits. ``Start here/.start-here.json`` records the
sha256 of what was installed for each file: a file still as installed is brought up to date, a
file the user changed is kept as it is, and a missing file is put back.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from urllib.parse import quote

START_HERE = "Start here"
FL_FOLDER = "Federated learning"
MANIFEST = ".start-here.json"
PACKAGE = Path(__file__).resolve().parent
TEMPLATE_DIR = PACKAGE / "home_template"
FL_NOTEBOOKS = PACKAGE.parent / "fl_notebooks"


def lab_path(*parts: str) -> str:
    """A path under the Start-here folder, as JupyterLab's ``lab/tree/`` takes it."""
    return "/".join([START_HERE, *parts])


def lab_url(hub_prefix: str, *parts: str) -> str:
    """The hub URL that opens ``Start here/<parts>`` in the caller's own JupyterLab (starting
    the server if needed): ``/hub/user-redirect/lab/tree/...``."""
    return f"{hub_prefix}user-redirect/lab/tree/{quote(lab_path(*parts))}"


def lab_links(hub_prefix: str) -> dict[str, str]:
    """The Start-here notebooks the pages link to."""
    return {
        "welcome": lab_url(hub_prefix, "Welcome.ipynb"),
        "publish": lab_url(hub_prefix, "Publish a product.ipynb"),
        "partner": lab_url(hub_prefix, FL_FOLDER, "partner.ipynb"),
        "initiator": lab_url(hub_prefix, FL_FOLDER, "initiator.ipynb"),
        "results": lab_url(hub_prefix, FL_FOLDER, "results.ipynb"),
    }


def sources(template_dir: Path = TEMPLATE_DIR, fl_dir: Path = FL_NOTEBOOKS) -> dict[str, bytes]:
    """``{path under Start here: content}`` of everything the folder holds."""
    found: dict[str, bytes] = {}
    for path in sorted(template_dir.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            found[path.name] = path.read_bytes()
    if fl_dir.is_dir():
        for path in sorted(fl_dir.iterdir()):
            if path.suffix in (".ipynb", ".md") and path.is_file():
                found[f"{FL_FOLDER}/{path.name}"] = path.read_bytes()
    return found


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def install(home: Path, files: dict[str, bytes] | None = None,
            folder_name: str = START_HERE) -> dict[str, list[str]]:
    """Bring ``home/Start here`` (or ``home/<folder_name>``: a workshop's materials) up to
    date without touching what the user changed; returns the paths ``added``, ``updated``
    and ``kept`` (edited by the user, left alone)."""
    files = sources() if files is None else files
    folder = Path(home) / folder_name
    if folder.is_symlink():
        raise RuntimeError(f"{folder} is a symbolic link; not writing through it")
    folder.mkdir(mode=0o755, exist_ok=True)
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        if not isinstance(manifest, dict):
            manifest = {}
    except (OSError, ValueError):
        manifest = {}
    done: dict[str, list[str]] = {"added": [], "updated": [], "kept": []}
    for rel, data in sorted(files.items()):
        target = folder / rel
        new = _sha(data)
        if target.is_symlink() or (target.exists() and not target.is_file()):
            done["kept"].append(rel)
            continue
        if not target.exists():
            _write(target, data)
            done["added"].append(rel)
            manifest[rel] = new
            continue
        current = _sha(target.read_bytes())
        if current == new:
            manifest[rel] = new
        elif manifest.get(rel) == current:  # as we installed it: not edited, so refreshed
            _write(target, data)
            done["updated"].append(rel)
            manifest[rel] = new
        else:
            done["kept"].append(rel)
    _write(manifest_path, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return done


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 3 and args[1] == "--stdin":
        # HOME --stdin FOLDER: {"path": "<base64>"} on stdin (workshop materials, which the
        # spawner reads from the platform's var/ and the user's account cannot)
        import base64

        files = {rel: base64.b64decode(data) for rel, data in json.load(sys.stdin).items()}
        print(json.dumps(install(Path(args[0]), files, args[2])))
        return 0
    if len(args) != 1:
        print("usage: python -m marketplace_ext.start_here HOME [--stdin FOLDER]",
              file=sys.stderr)
        return 2
    done = install(Path(args[0]))
    print(json.dumps(done))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
