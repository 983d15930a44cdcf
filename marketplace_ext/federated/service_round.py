"""FedAvg aggregation through the real service, for the experiment: one federated project on a
running platform, one :class:`~marketplace_ext.federated.client.FederatedClient` per unit
(each logged in as that unit's publisher, with its own key home), and every round's updates
encrypted by the units' clients, summed by the service as ciphertexts and decrypted by each
client. The experiment trains in this process; only the aggregation goes through the service,
exactly as the partner notebooks' does.
"""

from __future__ import annotations

import contextlib
import secrets
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..client import Market
from .client import FederatedClient
from .model import build_model, save_bundle


class ServiceAggregate:
    """``aggregate(updates, weights)`` of :func:`experiment.run_federated`, round by round
    through project ``name`` on the service at ``hub_url``.

    ``logins`` maps each unit to (user, password) of a publisher of that unit; the first unit
    opens the project. Every client must end a round with the same mean, which is checked.
    ``split``: the units share each aggregate's decryption (one slice each, see
    :mod:`~marketplace_ext.federated.split_decrypt`) instead of each decrypting all of it.
    """

    def __init__(
        self,
        hub_url: str,
        logins: Mapping[str, tuple[str, str]],
        spec: Mapping,
        seed: int,
        *,
        rounds: int,
        clip: float,
        max_weight: int,
        bits: int = 16,
        key_bits: int = 2048,
        home: Path | None = None,
        split: bool = False,
    ):
        self.home = Path(home or tempfile.mkdtemp(prefix="fl-experiment-"))
        self.split = split
        self.clients = {
            unit: FederatedClient(
                Market.login(hub_url, user, password, note="fl experiment"),
                home=self.home / unit,
                progress=False,
                poll=0.2,
            )
            for unit, (user, password) in logins.items()
        }
        model_dir = save_bundle(build_model(spec, seed=seed), spec, self.home / "model")
        initiator, *partners = self.clients.values()
        # the partner units are on the allow-list: approved as soon as they join
        self.project = initiator.open_project(
            f"theft-experiment-{secrets.token_hex(3)}",
            model_dir,
            rounds=rounds,
            quorum=len(self.clients),
            deadline_seconds=3600,
            key_size=key_bits,
            bits=bits,
            clip=clip,
            max_parties=len(self.clients),
            max_weight=max_weight,
            allow_units=list(logins)[1:],
        )["id"]
        for client in partners:
            client.join(self.project)
        initiator.wrap_pending(self.project)
        for client in partners:
            client.private_key(self.project, wait=60)
        initiator.start(self.project)
        self.pool = ThreadPoolExecutor(len(self.clients), thread_name_prefix="fl-unit")
        self.seconds = 0.0
        self.rounds = 0
        self.parties: list[int] = []

    def __call__(self, updates: list[np.ndarray], weights: list[int]) -> np.ndarray:
        t = time.perf_counter()

        def one(i: int, client: FederatedClient):
            return client.run_round(
                self.project,
                lambda base: (updates[i], int(weights[i])),
                timeout=600,
                split=self.split,
            )

        results = list(self.pool.map(one, range(len(updates)), self.clients.values()))
        means = [r.mean_update for r in results]
        if any(not np.array_equal(means[0], m) for m in means[1:]):
            raise RuntimeError(f"units decrypted different means in round {results[0].number}")
        self.seconds += time.perf_counter() - t
        self.rounds += 1
        self.parties.append(results[0].parties)
        return means[0]

    def report(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "rounds": self.rounds,
            "parties_per_round": sorted(set(self.parties)),
            "seconds_in_rounds": round(self.seconds, 2),
        }

    def close(self) -> None:
        self.pool.shutdown()
        for client in self.clients.values():
            client.close()


@contextlib.contextmanager
def demo_platform() -> Iterator[tuple[str, dict[str, tuple[str, str]]]]:
    """A throw-away ``market run`` platform (no Spark: the experiment trains in-process) with
    the demo units; yields (hub URL, {unit: (publisher, password)})."""
    from ..launcher import throwaway_platform

    with throwaway_platform() as (platform, accounts):
        yield platform.url, {u: (f"publisher-{u}", accounts[f"publisher-{u}"]) for u in "abcde"}
