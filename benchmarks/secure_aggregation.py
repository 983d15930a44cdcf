"""One federated round under Paillier: packed slots vs per-value phe vs plain numpy FedAvg,
all measured in the same run on the same 2048-bit key.

    .venv/bin/python benchmarks/secure_aggregation.py [--quick] [--parties 5]
        [--sizes 10000,100000] [--sample 200] [--max-weight 100] [--bits 16]

A round is: every party encrypts its weighted update, the service adds the ciphertexts, a
trainer decrypts the weighted mean; its time is the sum of the three, parties one after the
other (in a deployment they encrypt in parallel on their own machines).

* per-value phe: ``public_key.encrypt(w * v)`` per value and ``+`` of EncryptedNumbers, timed
  on --sample values per party and extrapolated (so labelled).
* packed, inline: :mod:`marketplace_ext.federated.packing` with CRT obfuscators computed as
  needed, on one thread.
* packed, pool: each party's obfuscator pool filled beforehand by its background thread (the
  offline part); "online" is what is left once the update is ready.
* plain numpy: clip + ``np.average``, no encryption; bytes are float32.
Decryption runs on one thread; the figure for two threads is printed too. Next to wall-clock
time, "round CPU" is this process's CPU time: on a shared machine it is the steadier figure
(for the pool row it includes the background refill during the online encryption).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import gmpy2
import numpy as np
import phe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from marketplace_ext.federated import packing  # noqa: E402
from marketplace_ext.federated.keys import generate_paillier_keypair  # noqa: E402


@dataclass(frozen=True)
class Cost:
    """Seconds of wall-clock time and of this process's CPU time (all threads)."""

    wall: float
    cpu: float

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.wall + other.wall, self.cpu + other.cpu)

    def __mul__(self, k: float) -> Cost:
        return Cost(self.wall * k, self.cpu * k)


ZERO = Cost(0.0, 0.0)


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return Cost(time.perf_counter() - w0, time.process_time() - c0), result


def mean_cost(costs: list[Cost]) -> Cost:
    return Cost(statistics.mean(c.wall for c in costs), statistics.mean(c.cpu for c in costs))


def naive_costs(pk, sk, parties: int, sample: int, rng) -> dict[str, Cost]:
    """Cost per value for per-value phe: encrypt, one addition, decrypt (+ divide)."""
    values = rng.normal(0, 0.3, (parties, sample))
    weights = rng.integers(1, 100, parties)
    enc, encrypted = timed(lambda: [[pk.encrypt(float(w * v)) for v in row]
                                    for row, w in zip(values, weights, strict=True)])
    add, sums = timed(lambda: [functools.reduce(lambda a, b: a + b, column)
                               for column in zip(*encrypted, strict=True)])
    total = int(weights.sum())
    dec, means = timed(lambda: [sk.decrypt(s) / total for s in sums])
    expected = np.average(values, axis=0, weights=weights)
    assert np.allclose(means, expected, atol=1e-9), "per-value phe decrypted a wrong mean"
    return {"enc": enc * (1 / (parties * sample)), "add": add * (1 / (sample * (parties - 1))),
            "dec": dec * (1 / sample)}


def secs(t: float) -> str:
    if t == 0:
        return "-"
    if t < 1e-3:
        return f"{t * 1e6:.1f} us"
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:,.2f} s"


def size_text(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def row(label: str, enc_party: Cost, agg: Cost, dec: Cost, parties: int, size: int) -> Cost:
    rnd = enc_party * parties + agg + dec
    print(f"  {label:<34}{secs(enc_party.wall):>11}{secs(enc_party.wall * parties):>12}"
          f"{secs(agg.wall):>11}{secs(dec.wall):>11}{secs(rnd.wall):>12}{secs(rnd.cpu):>12}"
          f"{size_text(size):>13}")
    return rnd


def run_size(pk, sk, args, length: int, naive: dict[str, Cost], rng) -> None:
    parties = args.parties
    spec = packing.PackSpec.create(pk.n, length, bits=args.bits, clip=1.0,
                                   max_parties=parties, max_weight=args.max_weight)
    vectors = rng.normal(0, 0.4, (parties, length))  # some values beyond the clip range
    weights = [int(w) for w in rng.integers(1, args.max_weight + 1, parties)]
    total_weight = sum(weights)
    print(f"\n{length:,} parameters: {spec.ciphertexts:,} ciphertexts per update "
          f"({spec.slots} slots of {spec.slot_bits} bits), weights {weights}")
    print(f"  {'(wall-clock unless CPU)':<34}{'enc/party':>11}{'enc total':>12}{'aggregate':>11}"
          f"{'decrypt':>11}{'round':>12}{'round CPU':>12}{'bytes/party':>13}")

    # (a) per-value phe, extrapolated
    naive_round = row(
        f"per-value phe (extrap. from {args.sample})", naive["enc"] * length,
        naive["add"] * (length * (parties - 1)), naive["dec"] * length, parties,
        length * spec.ciphertext_bytes,
    )

    # (b) packed, obfuscators computed inline (CRT: the trainers hold p and q), one thread
    inline = packing.Encryptor(pk, sk)
    enc_costs, updates = [], []
    for v, w in zip(vectors, weights, strict=True):
        cost, update = timed(lambda v=v, w=w: packing.pack_update(spec, v, w, inline))
        enc_costs.append(cost)
        updates.append(update)
    agg, total = timed(lambda: packing.add_encrypted(spec, [u.ciphertexts for u in updates]))
    dec, mean = timed(lambda: packing.unpack_aggregate(spec, total, sk, total_weight, parties))
    dec2, mean2 = timed(lambda: packing.unpack_aggregate(spec, total, sk, total_weight,
                                                         parties, workers=2))
    inline_round = row("packed, inline CRT", mean_cost(enc_costs), agg, dec, parties,
                       spec.update_bytes)

    # (b') packed, each party's pool filled beforehand by its background thread, which keeps
    # refilling (on the other core) while the party encrypts, as in a trainer's kernel
    fills, online, pooled_updates = [], [], []
    for v, w in zip(vectors, weights, strict=True):
        with packing.Encryptor(pk, sk, pool_size=spec.ciphertexts) as enc:
            cost, _ = timed(enc.wait_pool)
            fills.append(cost)
            cost, update = timed(lambda enc=enc, v=v, w=w: packing.pack_update(spec, v, w, enc))
            online.append(cost)
            pooled_updates.append(update)
    pagg, ptotal = timed(lambda: packing.add_encrypted(
        spec, [u.ciphertexts for u in pooled_updates]))
    pdec, pmean = timed(lambda: packing.unpack_aggregate(spec, ptotal, sk, total_weight,
                                                         parties))
    pool_round = row("packed, pool filled (online)", mean_cost(online), pagg, pdec, parties,
                     spec.update_bytes)

    # (c) plain numpy FedAvg
    reps = 20
    np_cost, reference = timed(lambda: [packing.plain_fedavg(vectors, weights, clip=spec.clip)
                                        for _ in range(reps)])
    numpy_round = row("plain numpy FedAvg", ZERO, np_cost * (1 / reps), ZERO, parties,
                      length * 4)

    bound = spec.quantization_bound(total_weight)
    for m in (mean, mean2, pmean):
        assert np.max(np.abs(m - reference[0])) <= bound, "packed mean outside the bound"
    clipped = sum(u.clipped for u in updates)
    online2 = pool_round.wall - pdec.wall + dec2.wall
    print(f"  offline pool fill: {secs(mean_cost(fills).wall)} per party "
          f"({spec.ciphertexts:,} obfuscators, background thread); decrypt on 2 threads: "
          f"{secs(dec2.wall)} (online round with it: {secs(online2)})")
    print(f"  max |packed - numpy| = {np.max(np.abs(mean - reference[0])):.2e} "
          f"(bound {bound:.2e}); {clipped:,} values clipped and reported")
    for what in ("wall", "cpu"):
        naive_t, inline_t, pool_t, numpy_t = (getattr(c, what) for c in (
            naive_round, inline_round, pool_round, numpy_round))
        print(f"  ratio (round speedup) vs per-value phe ({what}): "
              f"inline {naive_t / inline_t:,.0f}x, "
              f"online {naive_t / pool_t:,.0f}x; packed vs numpy: inline "
              f"{inline_t / numpy_t:,.0f}x, online {pool_t / numpy_t:,.0f}x slower")
    print(f"  ciphertext / float32 bytes: {spec.update_bytes / (length * 4):.2f}x "
          f"(per-value phe: {spec.ciphertext_bytes / 4:.0f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (seconds)")
    parser.add_argument("--parties", type=int, default=5)
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated lengths")
    parser.add_argument("--sample", type=int, default=200,
                        help="values per party timed for per-value phe")
    parser.add_argument("--max-weight", type=int, default=100)
    parser.add_argument("--bits", type=int, default=16)
    parser.add_argument("--key-bits", type=int, default=2048, choices=(2048, 3072))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes, args.sample = [1000, 5000], 10

    rng = np.random.default_rng(2018)
    pk, sk = generate_paillier_keypair(args.key_bits)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"secure aggregation: {args.parties} parties, {args.key_bits}-bit Paillier key, "
          f"phe {phe.__version__}, "
          f"gmpy2 {gmpy2.version()}, {os.cpu_count()} CPU(s), load average {load} at start")
    print(f"packing: {args.bits}-bit values, clip 1.0, max_weight {args.max_weight}, "
          f"max_parties {args.parties}")
    naive = naive_costs(pk, sk, args.parties, args.sample, rng)
    print(f"per-value phe, timed on {args.sample} values x {args.parties} parties (wall): "
          f"encrypt {secs(naive['enc'].wall)}/value, add {secs(naive['add'].wall)}/value, "
          f"decrypt {secs(naive['dec'].wall)}/value")
    for length in sizes:
        run_size(pk, sk, args, length, naive, rng)


if __name__ == "__main__":
    main()
