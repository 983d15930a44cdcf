"""Plain helpers shared by test modules (fixtures live in conftest.py): logging in as a demo
user, publishing a product on the shelf, federated-learning model bundles."""

from __future__ import annotations

import secrets
from pathlib import Path

import nbformat
import yaml

from marketplace_ext.bundle import new_product
from marketplace_ext.client import Market

TINY_MODEL = {"weeks": 2, "pool_weeks": 1, "conv": 1, "wide": 1, "hidden": 1}


def market_as(hub_url: str, user: str, password: str) -> Market:
    return Market.login(hub_url, user, password, note=f"test {user}")


def publish_on_shelf(publisher: Market, operator: Market, tmp_path, plans: list[dict]) -> str:
    """A tool of the publisher's unit, approved and on the shelf; returns its name."""
    name = f"shop-{secrets.token_hex(3)}"
    bundle = new_product("tool", name, tmp_path)
    manifest = yaml.safe_load((bundle / "product.yaml").read_text())
    manifest["plans"] = plans
    (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    version = publisher.publish(bundle)["version"]
    operator.review(name, version, "approve")
    return name


def save_model(directory: Path, spec: dict = TINY_MODEL, seed: int = 0) -> Path:
    from marketplace_ext.federated.model import build_model, save_bundle

    if not (directory / "model.json").exists():
        save_bundle(build_model(spec, seed=seed), spec, directory)
    return directory


def project_name(prefix: str = "fl") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


# a model-to-data training notebook: reads unit data, returns a model (and tries to leak)
TRAIN = """\
# <b>trains</b> a one-feature theft model
import json, os
import numpy as np
import torch
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
spark.catalog.setCurrentDatabase(os.environ["UNIT_DATABASE"])
customers = spark.table("customers").toPandas()
print(customers.head(50).to_string())  # the executed notebook shows private rows: owner only
daily = spark.table("consumption_daily").groupBy("customer_id").avg("kwh").toPandas()
labels = spark.table("theft_labels").toPandas()
frame = daily.merge(labels, on="customer_id")
x = torch.tensor(frame[["avg(kwh)"]].to_numpy(), dtype=torch.float32)
y = torch.tensor(frame["is_thief"].to_numpy(), dtype=torch.float32)
model = torch.nn.Linear(1, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for _ in range(epochs):
    optimizer.zero_grad()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
    loss.backward()
    optimizer.step()
os.makedirs("outputs", exist_ok=True)
torch.save(model.state_dict(), "outputs/model.pt")
with open("outputs/metrics.json", "w") as f:
    json.dump({"loss": float(loss), "rows": len(frame)}, f)
with open("outputs/extra.json", "w") as f:  # not declared: must not come back
    json.dump({"first": customers.iloc[0].astype(str).to_dict()}, f)
"""


def training_notebook(code: str = TRAIN) -> dict:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("epochs: int = 20")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(code)]
    return nbformat.from_dict(nb)
