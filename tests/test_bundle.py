"""Product bundles: the templates and catalogue, every validation rule, the canonical archive and
hostile uploads - all on real files and real zip archives built here."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import struct
import subprocess
import warnings
import zipfile
from pathlib import Path

import nbformat
import pytest
import yaml

from marketplace_ext import bundle as b
from marketplace_ext.bundle import (
    Bundle,
    BundleInvalid,
    BundleLimits,
    BundleTooLarge,
    Problem,
    archive_sha256,
    canonical_archive,
    extract_upload,
    load_bundle,
    new_product,
    validate_dir,
)
from marketplace_ext.errors import Conflict, InvalidField

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "product_templates"
KINDS = ["tool", "application", "data"]
CATALOGUE = sorted(p.name for p in (TEMPLATES / "catalogue").iterdir() if p.is_dir())


# --- helpers -----------------------------------------------------------------------------------


def copy_template(kind: str, tmp_path: Path, name: str = "bundle") -> Path:
    dest = tmp_path / name
    shutil.copytree(TEMPLATES / kind, dest)
    return dest


def edit_manifest(root: Path, **changes) -> None:
    path = root / "product.yaml"
    manifest = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))


def edit_notebook(root: Path, change) -> None:
    path = root / "main.ipynb"
    nb = json.loads(path.read_text())
    change(nb)
    path.write_text(json.dumps(nb))


def parameters_cell(nb: dict) -> dict:
    return next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))


def where(problems: list[Problem]) -> set[tuple[str, str | None]]:
    return {(p.file, p.field) for p in problems}


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def make_zip(entries: dict[str, bytes], prefix: str = "", compression=zipfile.ZIP_DEFLATED,
             dir_entries: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        if dir_entries:
            dirs = {"/".join(n.split("/")[:k]) for n in entries for k in range(1, n.count("/") + 1)}
            for d in sorted(dirs):
                zf.writestr(prefix + d + "/", b"")
        for name, data in entries.items():
            zf.writestr(prefix + name, data)
    return buf.getvalue()


def patch_member(data: bytes, name: str, fmt: str, local: int, central: int, value) -> bytes:
    """Overwrite one field of a member's local and central headers (at the given offsets)."""
    out = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        offset = zf.getinfo(name).header_offset
    assert out[offset:offset + 4] == b"PK\x03\x04"
    struct.pack_into(fmt, out, offset + local, value)
    at = out.find(b"PK\x01\x02")
    while at != -1:
        name_len = struct.unpack_from("<H", out, at + 28)[0]
        if out[at + 46:at + 46 + name_len] == name.encode():
            struct.pack_into(fmt, out, at + central, value)
            return bytes(out)
        at = out.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"{name} not in the central directory")


def patch_declared_size(data: bytes, name: str, size: int) -> bytes:
    """Make a member lie about its uncompressed size."""
    return patch_member(data, name, "<I", 22, 24, size)


@pytest.fixture
def good_entries() -> dict[str, bytes]:
    return files_of(TEMPLATES / "application")


def assert_left_nothing(dest: Path) -> None:
    assert not dest.exists() or not any(dest.iterdir())
    if dest.parent.exists():  # nor a staging directory beside it
        assert [p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}-")] == []


# --- the shipped templates and catalogue -------------------------------------------------------


@pytest.mark.parametrize("path", KINDS + [f"catalogue/{name}" for name in CATALOGUE])
def test_templates_and_catalogue_validate(path):
    root = TEMPLATES / path
    assert validate_dir(root) == []
    loaded = load_bundle(root)
    assert isinstance(loaded, Bundle)
    assert loaded.root == root.resolve()
    assert loaded.notebook == "main.ipynb" and loaded.readme.strip()
    assert loaded.files == sorted(loaded.files) and "product.yaml" in loaded.files
    assert loaded.parameters, "every example takes parameters"
    for name, p in loaded.parameters.items():
        assert p["inferred_type_name"].split("[")[0] in b.PARAMETER_TYPES, name
    m = loaded.manifest  # with the defaults applied
    assert "encrypted" not in m and m["notebook"] == "main.ipynb" and m["requirements"] is None
    assert m["kind"] == (path if path in KINDS else m["kind"])
    if path.startswith("catalogue/"):
        assert m["name"] == path.split("/")[1]
    assert m["outputs"] and all(o["path"].startswith("outputs/") for o in m["outputs"])


def test_catalogue_kinds_follow_the_design():
    kinds = {name: load_bundle(TEMPLATES / "catalogue" / name).manifest["kind"]
             for name in CATALOGUE}
    assert kinds == {"electricity-theft-detection": "application",
                     "tariff-risk-prediction": "tool", "ev-charger-layout": "application",
                     # issue 17: the rest of the paper's Table 2
                     "customer-service-panorama": "application",
                     "business-hall-efficiency": "application",
                     "customer-portrait": "application",
                     "abnormal-consumption-detection": "tool",
                     "transformer-overload-prediction": "tool",
                     "service-efficiency-analysis": "application",
                     "power-resumption-index": "application", "power-marketing-data": "data",
                     "abnormal-price-detection": "tool", "traffic-prediction": "tool"}


def test_schema_enums_match_the_module():
    schema = json.loads(b.SCHEMA_PATH.read_text())
    props = schema["properties"]
    assert tuple(props["kind"]["enum"]) == b.KINDS
    assert tuple(props["plans"]["items"]["properties"]["type"]["enum"]) == b.PLAN_TYPES
    assert tuple(props["sharing"]["items"]["enum"]) == b.SHARING_MODES
    rule = props["views"]["items"]["properties"]["columns"]["additionalProperties"]
    assert tuple(rule["else"]["properties"]["rule"]["enum"]) == b.VIEW_RULES
    assert set(rule["else"]["properties"]) - {"rule"} == {
        p for params in b.RULE_PARAMS.values() for p in params}
    assert set(rule["then"]["enum"]) == {r for r, params in b.RULE_PARAMS.items() if not params}
    assert set(b.RULE_PARAMS) == set(b.VIEW_RULES)
    assert set(b.SHARING_BY_KIND) == set(b.KINDS)
    assert all(set(modes) <= set(b.SHARING_MODES) for modes in b.SHARING_BY_KIND.values())
    assert set(schema["required"]) | set(b.DEFAULTS) == set(props)


@pytest.fixture(scope="module")
def grid_kernel():
    jupyter = ROOT / ".venv" / "bin" / "jupyter"
    if not jupyter.exists():
        pytest.skip(f"{jupyter} is missing: run `make install` to create the environment")
    listed = subprocess.run([str(jupyter), "kernelspec", "list", "--json"],
                            capture_output=True, text=True, timeout=60)
    if listed.returncode or "grid-python" not in json.loads(listed.stdout)["kernelspecs"]:
        pytest.skip("the grid-python kernel is not installed (`jupyter kernelspec list` does not "
                    "show it): run `make install`")
    return "grid-python"


@pytest.mark.parametrize("kind", KINDS)
def test_template_notebook_runs_with_papermill(kind, tmp_path, grid_kernel, monkeypatch):
    import papermill

    monkeypatch.delenv("SPARK_REMOTE", raising=False)  # the sample path, no data platform
    root = copy_template(kind, tmp_path)
    manifest = load_bundle(root).manifest
    papermill.execute_notebook(
        str(root / "main.ipynb"), str(tmp_path / "out.ipynb"), kernel_name=grid_kernel,
        cwd=str(root), progress_bar=False, log_output=False,
    )
    for output in manifest["outputs"]:
        assert (root / output["path"]).stat().st_size > 0, output["path"]
    # the results of a trial run must not be published with the bundle
    assert {p.field for p in validate_dir(root)} == {
        f"outputs[{i}].path" for i in range(len(manifest["outputs"]))}


# --- validation: every problem at once, each precise -------------------------------------------


def test_broken_bundle_reports_every_problem(tmp_path):
    root = copy_template("tool", tmp_path)
    edit_manifest(root, kernel="python3",
                  plans=[{"type": "per_use", "price": 60}, {"type": "month", "price": 30}])
    edit_notebook(root, lambda nb: parameters_cell(nb)["metadata"].update(tags=[]))
    (root / "README.md").unlink()

    problems = validate_dir(root)
    assert where(problems) == {
        ("product.yaml", "plans[0].price"),
        ("product.yaml", "kernel"),
        ("main.ipynb", "notebook.parameters"),
        ("README.md", None),
    }
    assert len(problems) == 4
    text = [str(p) for p in problems]
    assert "product.yaml: plans[0].price: 60 is above the maximum price 50" in text
    assert any("unknown kernel 'python3'" in t and "grid-python" in t for t in text)
    assert any("tagged 'parameters'" in t for t in text)

    with pytest.raises(BundleInvalid) as e:
        load_bundle(root)
    err = e.value
    assert err.status == 400 and err.field == problems[0].field
    assert err.problems == problems
    assert all(str(p) in err.message for p in problems)
    assert [p["field"] for p in err.to_dict()["problems"]] == [p.field for p in problems]


def _set(key, value):
    return lambda root: edit_manifest(root, **{key: value})


def _write(rel, text):
    def change(root):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return change


def _params(source):
    return lambda root: edit_notebook(
        root, lambda nb: parameters_cell(nb).update(source=source))


def _dup_parameters(root):
    def change(nb):
        cell = json.loads(json.dumps(parameters_cell(nb)))
        cell["id"] = "second-parameters"
        nb["cells"].append(cell)
    edit_notebook(root, change)


CASES = {
    # product.yaml
    "manifest missing": (lambda r: (r / "product.yaml").unlink(), "product.yaml", None,
                         "missing"),
    "invalid yaml": (_write("product.yaml", "name: [unclosed\n"), "product.yaml", None,
                     "not valid YAML: line 2"),
    "not a mapping": (_write("product.yaml", "- a\n- b\n"), "product.yaml", None,
                      "must be a mapping"),
    "yaml alias": (_write("product.yaml", "name: &n x\ntitle: *n\n"), "product.yaml", None,
                   "aliases"),
    "duplicate key": (lambda r: (r / "product.yaml").write_text(
        (r / "product.yaml").read_text() + "\nname: other\n"), "product.yaml", None,
        "'name' appears twice"),
    "missing title": (_set("title", None), "product.yaml", "title", "missing; expected"),
    "unknown field": (_set("plan", "month"), "product.yaml", "plan",
                      "did you mean 'plans'"),
    # the flag promised encryption at rest that nothing implemented: it is gone from the format
    "encrypted flag": (_set("encrypted", True), "product.yaml", "encrypted", "unknown field"),
    "bad name": (_set("name", "Meter Score"), "product.yaml", "name", "slug"),
    "bad kind": (_set("kind", "model"), "product.yaml", "kind",
                 "expected one of: data, tool, application"),
    "kind named like a rule": (_set("kind", "round"), "product.yaml", "kind",
                               "unknown value 'round'"),
    "kind not a string": (_set("kind", ["tool"]), "product.yaml", "kind",
                          "unknown value ['tool']"),
    "version not semver": (_set("version", "1.0"), "product.yaml", "version",
                           "semantic version"),
    "version as a number": (_set("version", 1.5), "product.yaml", "version", 'quote it: "1.5"'),
    "unknown plan type": (_set("plans", [{"type": "forever", "price": 20}]), "product.yaml",
                          "plans[0].type", "unknown value 'forever'; expected one of: per_use"),
    "duplicate plan type": (_set("plans", [{"type": "month", "price": 20},
                                           {"type": "month", "price": 30}]),
                            "product.yaml", "plans[1].type", "already priced in plans[0]"),
    "price below min": (_set("plans", [{"type": "per_use", "price": 5}]), "product.yaml",
                        "plans[0].price", "5 is below the minimum price 10"),
    "price not integer": (_set("plans", [{"type": "per_use", "price": 12.5}]), "product.yaml",
                          "plans[0].price", "expected a whole number"),
    "no plans": (_set("plans", []), "product.yaml", "plans", "at least 1 entry"),
    "sharing of another kind": (_set("sharing", ["download", "interface"]), "product.yaml",
                                "sharing[1]", "a tool product may offer download, remote_run"),
    "views on a tool": (_set("views", [{"view": "v", "source": "t",
                                        "columns": {"a": {"rule": "keep"}}}]),
                        "product.yaml", "views", "only data products declare views"),
    "output escapes": (_set("outputs", [{"path": "../../etc/passwd"}]), "product.yaml",
                       "outputs[0].path", "leaves the bundle"),
    "output absolute": (_set("outputs", [{"path": "/tmp/x.csv"}]), "product.yaml",
                        "outputs[0].path", "is absolute"),
    "output left in the bundle": (_write("outputs/scores.csv", "customer_id,score\n"),
                                  "product.yaml", "outputs[0].path", "delete it before publishing"),
    "notebook not .ipynb": (_set("notebook", "main.py"), "product.yaml", "notebook",
                            "ending in .ipynb"),
    "requirements missing": (_set("requirements", "requirements.txt"), "product.yaml",
                             "requirements", "not a file in the bundle"),
    "notebook escapes": (_set("notebook", "../main.ipynb"), "product.yaml", "notebook",
                         "leaves the bundle"),
    "notebook missing": (_set("notebook", "other.ipynb"), "other.ipynb", None,
                         "is not in the bundle"),
    "non-string key": (_write("product.yaml", "name: x\n2024: y\n"), "product.yaml", None,
                       "not a string"),
    # the notebook
    "notebook not json": (_write("main.ipynb", "{not json"), "main.ipynb", None,
                          "not valid notebook JSON: line 1"),
    "notebook v3": (_write("main.ipynb", '{"nbformat": 3, "nbformat_minor": 0}'),
                    "main.ipynb", "nbformat", "expected nbformat 4"),
    "notebook schema": (lambda r: edit_notebook(r, lambda nb: nb["cells"][0].update(bogus=1)),
                        "main.ipynb", "cells[0]", "not a valid nbformat 4 notebook"),
    "no kernelspec": (lambda r: edit_notebook(r, lambda nb: nb["metadata"].pop("kernelspec")),
                      "main.ipynb", "metadata.kernelspec", "papermill needs"),
    "other kernel in notebook": (lambda r: edit_notebook(
        r, lambda nb: nb["metadata"]["kernelspec"].update(name="python3")),
        "main.ipynb", "metadata.kernelspec.name", "product.yaml says 'grid-python'"),
    "two parameters cells": (_dup_parameters, "main.ipynb", "notebook.parameters",
                             "papermill reads only the first"),
    "untyped parameter": (_params('table = "consumption_daily"\n'), "main.ipynb",
                          "notebook.parameters.table", "has no type"),
    "unsupported type": (_params("when: date = None\n"), "main.ipynb",
                         "notebook.parameters.when", "cannot be entered in the run form"),
    "default of wrong type": (_params('top: int = "5"\n'), "main.ipynb",
                              "notebook.parameters.top", "not the declared type int"),
    "default not literal": (_params('path: str = os.getcwd()\n'), "main.ipynb",
                            "notebook.parameters.path", "not a literal"),
    "= in help comment": (_params('x: int = 1  # 1 = fast\n'), "main.ipynb",
                          "notebook.parameters", "line 1 (x): papermill cannot read"),
    "chained assignment": (_params("a = b = 1\n"), "main.ipynb", "notebook.parameters",
                           "line 1 (a = b)"),
    "parameters not python": (_params("x: int = (\n"), "main.ipynb", "notebook.parameters",
                              "not valid Python"),
    # the card and the files
    "empty readme": (_write("README.md", " \n\n"), "README.md", None, "is empty"),
    "readme not utf-8": (lambda r: (r / "README.md").write_bytes(b"\xff\xfe caf\xe9"),
                         "README.md", None, "not UTF-8"),
    "symlink": (lambda r: os.symlink("/etc/passwd", r / "files" / "passwd"), "files/passwd",
                None, "symbolic link"),
    "symlinked directory": (lambda r: os.symlink("/etc", r / "files" / "etc"), "files/etc",
                            None, "symbolic link"),
    "backslash name": (_write("files/a\\b.txt", "x"), "files/a\\b.txt", None, "backslash"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_problem_is_named_precisely(case, tmp_path):
    change, file, field, text = CASES[case]
    root = copy_template("tool", tmp_path)
    change(root)
    problems = validate_dir(root)
    matching = [p for p in problems if (p.file, p.field) == (file, field)]
    assert matching, f"expected a problem at {file}: {field}, got {[str(p) for p in problems]}"
    assert any(text in p.message for p in matching), [str(p) for p in matching]
    with pytest.raises(BundleInvalid):
        load_bundle(root)


def test_data_products_need_known_views(tmp_path):
    root = copy_template("data", tmp_path)
    manifest = yaml.safe_load((root / "product.yaml").read_text())
    manifest["views"][0]["columns"]["kwh"] = {"rule": "mask"}
    manifest["views"][1]["columns"]["district"] = {"rule": "round", "digits": "one"}
    manifest["sharing"] = ["download", "remote_call"]
    (root / "product.yaml").write_text(yaml.safe_dump(manifest))
    problems = validate_dir(root)
    assert where(problems) == {
        ("product.yaml", "views[0].columns.kwh.rule"),
        ("product.yaml", "views[1].columns.district.digits"),
        ("product.yaml", "sharing[1]"),
    }
    assert any("'mask'" in p.message and "drop, hash, generalize" in p.message
               for p in problems)

    # the parameters that go with each rule, the shorthand `column: rule`
    manifest = yaml.safe_load((root / "product.yaml").read_text())
    manifest["sharing"] = ["download"]
    manifest["views"][0]["columns"] = {"customer_id": "hash", "day": {"rule": "generalize"},
                                       "kwh": {"rule": "noise", "scale": 0.5, "digits": 1},
                                       "n_halfhours": "round"}
    manifest["views"][1]["columns"] = {"name": "drop", "phone": {"rule": "drop"}}
    manifest["views"][1]["view"] = manifest["views"][1]["source"]
    (root / "product.yaml").write_text(yaml.safe_dump(manifest))
    problems = validate_dir(root)
    assert where(problems) == {
        ("product.yaml", "views[0].columns.day.to"),
        ("product.yaml", "views[0].columns.kwh.digits"),
        ("product.yaml", "views[0].columns.n_halfhours"),
        ("product.yaml", "views[1].view"),
        ("product.yaml", "views[1].columns"),
    }
    text = "\n".join(map(str, problems))
    assert "views[0].columns.kwh.digits: rule 'noise' takes scale, not 'digits'" in text
    assert "views[0].columns.day.to: missing; rule 'generalize' needs month, year" in text
    assert "views[1].columns: every column is dropped" in text
    assert "n_halfhours: rule 'round' takes parameters, so it needs the mapping form " \
        "{rule: round, digits: ...}" in text

    edit_manifest(root, views=[])
    assert ("product.yaml", "views") in where(validate_dir(root))
    edit_manifest(root, views=None)
    assert any("at least one desensitized view" in p.message for p in validate_dir(root))


def test_size_and_count_limits(tmp_path):
    root = copy_template("tool", tmp_path)
    (root / "files" / "weights.bin").write_bytes(os.urandom(4096))
    limits = BundleLimits(max_file_bytes=2048)
    problems = validate_dir(root, limits)
    assert any(p.file == "files/weights.bin" and "4 KiB" in p.message and "2 KiB" in p.message
               for p in problems)
    with pytest.raises(BundleTooLarge) as e:
        load_bundle(root, limits)
    assert e.value.status == 413

    n = len(files_of(root))
    many = BundleLimits(max_files=n - 1)
    assert any("the limit is" in p.message and p.file == "" for p in validate_dir(root, many))
    total = BundleLimits(max_total_bytes=10_000)
    assert any("add up to" in p.message for p in validate_dir(root, total))


def test_price_bounds_and_kernels_come_from_the_limits(tmp_path):
    root = copy_template("tool", tmp_path)
    edit_manifest(root, plans=[{"type": "per_use", "price": 60}], kernel="r-kernel")
    limits = BundleLimits(price_max=100, known_kernels=frozenset({"grid-python", "r-kernel"}))
    problems = validate_dir(root, limits)
    # the manifest is fine for this marketplace; only the notebook still names another kernel
    assert where(problems) == {("main.ipynb", "metadata.kernelspec.name")}


def test_junk_is_ignored(tmp_path):
    root = copy_template("tool", tmp_path)
    before = canonical_archive(root)
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".ipynb_checkpoints" / "main-checkpoint.ipynb").write_text("{broken")
    (root / "__pycache__").mkdir()
    os.symlink("/etc", root / "__pycache__" / "link")
    assert validate_dir(root) == []
    assert canonical_archive(root) == before
    assert not any(".ipynb_checkpoints" in f for f in load_bundle(root).files)


# --- the canonical archive ---------------------------------------------------------------------


def test_canonical_archive_depends_only_on_content(tmp_path):
    content = files_of(TEMPLATES / "tool")
    a, c = tmp_path / "a", tmp_path / "c"
    for root, order in ((a, sorted(content)), (c, sorted(content, reverse=True))):
        for i, rel in enumerate(order):
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content[rel])
            os.utime(path, (1_000_000 + i * 777, 1_000_000 + i * 777))
    (c / "files" / "model.json").chmod(0o755)
    os.utime(c / "README.md", (2_000_000_000, 2_000_000_000))

    archive = canonical_archive(a)
    assert canonical_archive(c) == archive
    assert canonical_archive(a) == archive  # and again

    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == sorted(content)  # sorted, no directory entries
        for info in infos:
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert info.external_attr >> 16 == stat.S_IFREG | 0o644
            assert info.extra == b"" and info.comment == b""
            assert zf.read(info) == content[info.filename]

    # the same bundle zipped two other ways and uploaded comes back to the same bytes
    for i, data in enumerate([
        make_zip(content, prefix="my-bundle/", dir_entries=True),
        make_zip(content, compression=zipfile.ZIP_STORED),
    ]):
        dest = extract_upload(data, tmp_path / f"upload-{i}")
        assert canonical_archive(dest) == archive

    # different content, a renamed file, an extra empty file: different bytes and sha256
    shas = {archive_sha256(archive)}
    (c / "README.md").write_bytes(content["README.md"] + b"\n")
    shas.add(archive_sha256(canonical_archive(c)))
    (c / "README.md").write_bytes(content["README.md"])
    assert archive_sha256(canonical_archive(c)) == archive_sha256(archive)
    (c / "files" / "model.json").rename(c / "files" / "model2.json")
    shas.add(archive_sha256(canonical_archive(c)))
    (c / "files" / "empty").write_bytes(b"")
    shas.add(archive_sha256(canonical_archive(c)))
    assert len(shas) == 4
    assert archive_sha256(b"") == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


def test_canonical_archive_refuses_links(tmp_path):
    root = copy_template("tool", tmp_path)
    os.symlink("/etc/passwd", root / "files" / "passwd")
    with pytest.raises(BundleInvalid) as e:
        canonical_archive(root)
    assert e.value.problems[0].file == "files/passwd"


# --- uploads -----------------------------------------------------------------------------------


def test_upload_with_or_without_a_top_level_directory(tmp_path, good_entries):
    junk = {"__MACOSX/._main.ipynb": b"\x00\x05\x16\x07", "app/.DS_Store": b"x"}
    flat = extract_upload(make_zip(good_entries), tmp_path / "flat")
    nested_entries = {f"app/{k}": v for k, v in good_entries.items()}
    nested = extract_upload(make_zip({**nested_entries, **junk}), tmp_path / "nested")
    (tmp_path / "empty").mkdir()
    into_empty = extract_upload(make_zip(good_entries), tmp_path / "empty")
    for root in (flat, nested, into_empty):
        assert files_of(root) == good_entries
        assert validate_dir(root) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    with pytest.raises(FileExistsError):
        extract_upload(make_zip(good_entries), flat)


def hostile_cases(good: dict[str, bytes]) -> dict:
    """name -> a function building (upload bytes, expected error, text of its message, limits);
    built lazily, as a few of them compress 60 MB."""
    small = BundleLimits(max_file_bytes=2**20, max_total_bytes=4 * 2**20, max_files=50)
    default = BundleLimits()

    def with_member(info: zipfile.ZipInfo, data: bytes, base=good) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, content in base.items():
                zf.writestr(name, content)
            zf.writestr(info, data)
        return buf.getvalue()

    link = zipfile.ZipInfo("files/passwd")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    device = zipfile.ZipInfo("files/null")
    device.create_system = 3
    device.external_attr = (stat.S_IFCHR | 0o666) << 16
    def locked() -> bytes:  # zipfile cannot encrypt: set the "encrypted" flag bit by hand
        data = make_zip({**good, "files/secret.bin": b"x"}, compression=zipfile.ZIP_STORED)
        return patch_member(data, "files/secret.bin", "<H", 6, 8, 0x1)

    def corrupt() -> bytes:
        data = make_zip({**good, "files/data.bin": b"original"}, compression=zipfile.ZIP_STORED)
        return data.replace(b"original", b"tampered")

    def bomb(size: int, declared: int | None = None) -> bytes:
        info = zipfile.ZipInfo("files/zeros.bin")
        info.compress_type = zipfile.ZIP_DEFLATED
        data = with_member(info, bytes(size))  # zeros: 60 MB deflate to 60 KB
        return data if declared is None else patch_declared_size(data, info.filename, declared)

    def duplicate() -> bytes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate, as it should
            return with_member(zipfile.ZipInfo("README.md"), b"# Other card\n")

    def good_zip() -> bytes:
        return make_zip(good)

    return {
        "zip slip": lambda: (make_zip({**good, "../evil.txt": b"x"}), BundleInvalid,
                             "member '../evil.txt' leaves the bundle", default),
        "zip slip inside": lambda: (make_zip({**good, "files/../../evil.txt": b"x"}),
                                    BundleInvalid, "leaves the bundle", default),
        "absolute path": lambda: (make_zip({**good, "/etc/evil": b"x"}), BundleInvalid,
                                  "member '/etc/evil' is an absolute path", default),
        "backslash": lambda: (make_zip({**good, "..\\evil.txt": b"x"}), BundleInvalid,
                              "uses backslashes", default),
        "drive letter": lambda: (make_zip({**good, "C:/evil.txt": b"x"}), BundleInvalid,
                                 "drive letter", default),
        "symlink member": lambda: (with_member(link, b"/etc/passwd"), BundleInvalid,
                                   "member 'files/passwd' is a symbolic link", default),
        "device member": lambda: (with_member(device, b""), BundleInvalid,
                                  "not a regular file", default),
        "encrypted member": lambda: (locked(), BundleInvalid, "is encrypted", default),
        "corrupt member": lambda: (corrupt(), BundleInvalid, "fails its CRC-32 check", default),
        "duplicate member": lambda: (duplicate(), BundleInvalid, "'README.md' appears twice",
                                     default),
        "file and directory": lambda: (make_zip({**good, "files": b"x"}), BundleInvalid,
                                       "'files' is both a file and a directory", default),
        "zip bomb, small limits": lambda: (
            bomb(3 * 2**20, declared=1000), BundleTooLarge,
            "decompresses to more than 1 MiB although it declares 1000 bytes", small),
        "zip bomb, default limits": lambda: (
            bomb(60 * 2**20, declared=1000), BundleTooLarge,
            "decompresses to more than 50 MiB although it declares 1000 bytes", default),
        "member longer than declared": lambda: (
            bomb(4000, declared=1000), BundleInvalid, "unpacks to 4000 bytes but declares 1000",
            default),
        "member over the file limit": lambda: (
            bomb(60 * 2**20), BundleTooLarge, "declares 60 MiB; a file may be at most 50 MiB",
            default),
        "members over the total": lambda: (
            make_zip({**good, **{f"files/{i}.bin": bytes(900_000) for i in range(5)}}),
            BundleTooLarge, "declare 4.3 MiB in all", small),
        "too many files": lambda: (
            make_zip({**good, **{f"files/f{i}.txt": b"x" for i in range(60)}}), BundleTooLarge,
            "the archive has 64 files", small),
        "upload over the limit": lambda: (
            good_zip(), BundleTooLarge, "the upload is",
            BundleLimits(max_total_bytes=len(good_zip()) - 1)),
        "not a zip": lambda: (b"this is not a zip archive", BundleInvalid, "not a zip archive",
                              default),
        "truncated zip": lambda: (good_zip()[: len(good_zip()) // 2], BundleInvalid,
                                  "not a zip archive", default),
        "empty zip": lambda: (make_zip({}), BundleInvalid, "holds no files", default),
        "invalid yaml": lambda: (make_zip({**good, "product.yaml": b"name: [unclosed"}),
                                 BundleInvalid, "product.yaml: is not valid YAML", default),
        "invalid notebook json": lambda: (make_zip({**good, "main.ipynb": b"{not json"}),
                                          BundleInvalid, "main.ipynb: is not valid notebook JSON",
                                          default),
        "unknown plan type": lambda: (
            make_zip({**good, "product.yaml": good["product.yaml"].replace(b"per_use",
                                                                           b"forever")}),
            BundleInvalid, "plans[0].type: unknown value 'forever'", default),
    }


APPLICATION = files_of(TEMPLATES / "application")


@pytest.mark.parametrize("case", list(hostile_cases(APPLICATION)))
def test_hostile_upload_is_refused_and_leaves_nothing(case, tmp_path):
    data, error, text, limits = hostile_cases(APPLICATION)[case]()
    dest = tmp_path / "upload" / "bundle"
    with pytest.raises(error) as e:
        extract_upload(data, dest, limits)
    assert text in e.value.message, e.value.message
    assert e.value.problems and e.value.status == (413 if error is BundleTooLarge else 400)
    assert_left_nothing(dest)


def test_huge_declared_member_is_refused_before_reading(tmp_path, good_entries, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in good_entries.items():
            zf.writestr(name, data)
        zf.writestr("files/weights.bin", b"tiny")
    data = patch_declared_size(buf.getvalue(), "files/weights.bin", 2**30)

    def no_reading(*args, **kwargs):
        raise AssertionError("a member was read although the archive declares 1 GiB")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_reading)
    dest = tmp_path / "bundle"
    with pytest.raises(BundleTooLarge) as e:
        extract_upload(data, dest)
    assert "member 'files/weights.bin' declares 1 GiB" in e.value.message
    assert_left_nothing(dest)


def test_upload_into_existing_empty_dir_is_cleaned_on_failure(tmp_path):
    dest = tmp_path / "bundle"
    dest.mkdir()
    with pytest.raises(BundleInvalid):
        extract_upload(b"PK\x03\x04 nope", dest)
    assert_left_nothing(dest)


# --- new products ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_new_product_is_a_valid_bundle(kind, tmp_path):
    path = new_product(kind, "my-first-product", tmp_path / "work")
    assert path == tmp_path / "work" / "my-first-product"
    assert validate_dir(path) == []
    manifest = load_bundle(path).manifest
    assert manifest["name"] == "my-first-product" and manifest["kind"] == kind
    assert manifest["title"] == "My first product"
    assert (path / "README.md").read_text().startswith("# My first product\n")
    assert (path / "product.yaml").read_text().startswith("#")  # the comments survive
    assert files_of(path).keys() == files_of(TEMPLATES / kind).keys()

    with pytest.raises(Conflict) as e:
        new_product(kind, "my-first-product", tmp_path / "work")
    assert e.value.status == 409 and "already exists" in e.value.message
    assert validate_dir(path) == []  # untouched


def test_new_product_refuses_bad_input(tmp_path):
    with pytest.raises(InvalidField) as e:
        new_product("model", "x-product", tmp_path)
    assert e.value.field == "kind"
    for name in ("X", "Bad Name", "../escape", "-dash"):
        with pytest.raises(InvalidField) as e:
            new_product("tool", name, tmp_path)
        assert e.value.field == "name"
    assert list(tmp_path.iterdir()) == []


def test_remote_call_needs_a_rows_parameter_or_an_entry_point(tmp_path):
    bundle = new_product("tool", "no-rows", tmp_path)
    nb = nbformat.read(bundle / "main.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = "\n".join(line for line in params.source.splitlines()
                              if not line.startswith("rows"))
    nbformat.write(nb, bundle / "main.ipynb")
    problems = validate_dir(bundle)
    assert [(p.file, p.field) for p in problems] == [("product.yaml", "sharing")]
    assert "rows" in problems[0].message

    manifest = yaml.safe_load((bundle / "product.yaml").read_text())
    manifest["predict"] = "scoring.model:predict"
    (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    problems = validate_dir(bundle)
    assert [(p.file, p.field) for p in problems] == [("product.yaml", "predict")]
    (bundle / "scoring").mkdir()
    (bundle / "scoring" / "model.py").write_text("def predict(rows):\n    return rows\n")
    assert validate_dir(bundle) == []
