"""A small application product for the run form's tests (pages and widgets): typed papermill
parameters with comments, an optional uploaded file, an artifact, and a wait to watch
progress or cancel by."""

from __future__ import annotations

import secrets
from pathlib import Path

import nbformat
import yaml

from marketplace_ext.bundle import new_product
from marketplace_ext.client import Market

PARAMETERS = '''\
label: str = "hello"  # the text printed in the output
repeat: int = 2  # how many times to print it
scale: float = 1.5  # multiplies the uploaded file's row count
shout: bool = False  # print the text in capitals
tags: list[str] = []  # tags written to the result
sleep: float = 0  # seconds to wait before the last cell (to watch progress)
unit: str = ""
output_dir: str = "outputs"
input_path: str = ""
'''

CELLS = [
    '''\
import json, os
text = label.upper() if shout else label
for i in range(1, repeat + 1):
    print(f"{text} #{i}")
''',
    '''\
rows = None
if input_path:
    import pandas as pd
    read = pd.read_parquet if input_path.endswith(".parquet") else pd.read_csv
    frame = read(input_path)
    rows = len(frame)
    print(f"rows: {rows}, scaled: {rows * scale}")
''',
    '''\
import time
time.sleep(sleep)
''',
    '''\
os.makedirs(output_dir, exist_ok=True)
with open(f"{output_dir}/result.json", "w") as f:
    json.dump({"text": text, "repeat": repeat, "tags": tags, "rows": rows, "unit": unit}, f)
print("done for unit", unit)
''',
]


def form_bundle(name: str, directory: Path) -> Path:
    bundle = new_product("application", name, directory)
    manifest = yaml.safe_load((bundle / "product.yaml").read_text())
    manifest.update(plans=[{"type": "per_use", "price": 10}], sharing=["remote_run"],
                    summary="Prints a label and counts an uploaded file's rows (run form test).",
                    outputs=[{"path": "outputs/result.json", "description": "what it did"}])
    (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "grid-python", "display_name": "Python 3 (grid)",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(c) for c in CELLS]
    nbformat.write(nb, bundle / "main.ipynb")
    for stale in (bundle / "files").glob("*"):
        stale.unlink()
    return bundle


def publish_form_product(publisher: Market, operator: Market, directory: Path) -> str:
    """The product, approved and on the shelf; returns its (unique) name."""
    name = f"run-form-{secrets.token_hex(3)}"
    version = publisher.publish(form_bundle(name, directory))["version"]
    operator.review(name, version, "approve")
    return name
