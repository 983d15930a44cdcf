"""One federated round under Paillier, stage by stage: packed slots with whole and split
decryption vs per-value phe vs plain numpy FedAvg, all measured in the same run on the same
2048-bit key.

    .venv/bin/python benchmarks/secure_aggregation.py [--quick] [--parties 5]
        [--sizes 10000,100000,1000000] [--sample 200] [--max-weight 25] [--bits 16]

Stages of a round (wall-clock and this process's CPU time; on a shared machine CPU is the
steadier figure):

* encrypt: each party's obfuscator pool (r^n mod n^2 by CRT) is filled beforehand by a
  background thread (offline); "online" is what is left once the update is ready (quantize,
  weight, pack, multiply by the pooled obfuscators). Inline encryption costs about both.
* aggregate: the service checks every upload and multiplies the ciphertexts.
* decrypt, whole: one member decrypts the whole aggregate on 2 threads (last session's path).
* decrypt, split: each member decrypts its slice on 2 threads and seals it (AES-256-GCM); the
  members work in parallel on their own machines, so the round waits for the slowest share
  (measured here one after the other). Reassembly: a member opens the others' slices and
  unpacks the mean.
* online round = parties x online encryption (one after the other, as last session's figure)
  + aggregate + decryption (whole, or the slowest share + reassembly); its critical path, with
  the parties' encryptions in parallel as well, is printed below it.

Per-value phe (``public_key.encrypt(w * v)`` per value, ``+`` of EncryptedNumbers) is timed on
--sample values per party and extrapolated (so labelled); plain numpy is clip + np.average on
float32-sized data. Packing: weights are sample counts scaled to 1..max_weight (the headroom
of a slot is ceil(log2(max_weight x parties)) bits): 16-bit values, max_weight 25 and 5 parties
give 23-bit slots, 88 per 2048-bit plaintext, 1.45x the float32 bytes. Accuracy is printed
against plaintext FedAvg with the same integer weights (quantization only) and with the exact
sample counts (quantization and weight rounding).
"""

from __future__ import annotations

import argparse
import dataclasses
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
from marketplace_ext.federated import split_decrypt as sd  # noqa: E402
from marketplace_ext.federated.keys import generate_paillier_keypair  # noqa: E402

WORKERS = 2  # decryption threads per member (gmpy2 releases the GIL)
UNITS = "abcdefghij"


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


def slowest(costs: list[Cost]) -> Cost:
    return max(costs, key=lambda c: c.wall)


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


def line(label: str, cost: Cost, note: str = "") -> None:
    print(f"  {label:<60}{secs(cost.wall):>13}{secs(cost.cpu):>13}  {note}")


def scaled_weights(counts: list[int], max_weight: int) -> list[int]:
    """Sample counts as integer weights in 1..max_weight (the largest count gets max_weight)."""
    top = max(counts)
    return [max(1, min(max_weight, round(c * max_weight / top))) for c in counts]


def run_size(pk, sk, args, length: int, naive: dict[str, Cost], rng) -> None:
    parties = args.parties
    units = UNITS[:parties]
    spec = packing.PackSpec.create(pk.n, length, bits=args.bits, clip=1.0,
                                   max_parties=parties, max_weight=args.max_weight)
    vectors = rng.normal(0, 0.4, (parties, length))  # some values beyond the clip range
    counts = [int(c) for c in rng.integers(200, 5000, parties)]
    weights = scaled_weights(counts, args.max_weight)
    total_weight = sum(weights)
    print(f"\n{length:,} parameters: {spec.ciphertexts:,} ciphertexts per update "
          f"({spec.slots} slots of {spec.slot_bits} bits), sample counts {counts} -> weights "
          f"{weights}")
    print(f"  {'stage':<60}{'wall':>13}{'CPU':>13}")

    # encryption: pool filled offline by the background thread, then the online part
    fills, online, updates = [], [], []
    for v, w in zip(vectors, weights, strict=True):
        with packing.Encryptor(pk, sk, pool_size=spec.ciphertexts) as enc:
            cost, _ = timed(enc.wait_pool)
            fills.append(cost)
            cost, update = timed(lambda enc=enc, v=v, w=w: packing.pack_update(spec, v, w, enc))
            online.append(cost)
            updates.append(update)
    line("encrypt per party, offline pool fill (mean)", mean_cost(fills),
         f"{spec.ciphertexts:,} obfuscators on a background thread")
    line("encrypt per party, online (mean)", mean_cost(online))
    line("encrypt per party, inline ~ fill + online", mean_cost(fills) + mean_cost(online))
    blobs = [packing.ciphertexts_to_bytes(spec, u.ciphertexts) for u in updates]
    agg, total = timed(lambda: packing.add_encrypted(
        spec, [packing.ciphertexts_from_bytes(spec, b) for b in blobs]))
    line(f"aggregate {parties} uploads (parse + check + multiply)", agg)

    # whole decryption by one member
    dec_whole, whole = timed(lambda: packing.unpack_aggregate(
        spec, total, sk, total_weight, parties, workers=WORKERS))
    line(f"decrypt whole, one member, {WORKERS} threads", dec_whole)

    # split decryption: each member its slice, sealed; then reassembly by one member
    plan = sd.layout(len(total), units)
    key, width = sd.slice_key(sk), sd.plaintext_width(spec)
    digest = "0" * 64

    def ad(i: int) -> bytes:
        return sd.associated_data(1, 1, 1, digest, i, plan.count)

    shares, sealed = [], {}
    for i in range(plan.count):
        cost, blob = timed(lambda i=i: sd.seal_slice(
            key, ad(i), sd.decrypt_slice(spec, total, sk, plan, i, workers=WORKERS), width))
        shares.append(cost)
        sealed[i] = blob
    start, stop = plan.bounds(plan.count - 1)
    line(f"decrypt split, per member ({stop - start:,} ct, {WORKERS} thr) + seal: slowest",
         slowest(shares), f"mean {secs(mean_cost(shares).wall)}; {plan.count} members")

    def reassemble():
        parts = {i: sd.open_slice(key, ad(i), sealed[i], plan.bounds(i)[1] - plan.bounds(i)[0],
                                  width, spec.n) for i in range(plan.count)}
        return sd.reassemble(spec, plan, parts, total_weight, parties)

    reasm, split_mean = timed(reassemble)
    line("reassembly (open every slice + unpack the mean)", reasm,
         f"sealed slices {size_text(sum(map(len, sealed.values())))} in all")
    assert np.array_equal(split_mean, whole), "split and whole decryption disagree"

    # baselines: plain numpy FedAvg and per-value phe (extrapolated)
    reps = 20
    np_cost, reference = timed(lambda: [packing.plain_fedavg(vectors, weights, clip=spec.clip)
                                        for _ in range(reps)])
    numpy_round = np_cost * (1 / reps)
    naive_round = (naive["enc"] * (length * parties) + naive["add"] * (length * (parties - 1))
                   + naive["dec"] * length)
    enc_online = mean_cost(online) * parties
    whole_round = enc_online + agg + dec_whole
    split_round = enc_online + agg + slowest(shares) + reasm
    line("online round, whole decryption", whole_round)
    line("online round, split decryption", split_round)
    line("  critical path (parties encrypt in parallel too)",
         slowest(online) + agg + slowest(shares) + reasm)
    line("plain numpy FedAvg round", numpy_round)
    line(f"per-value phe round (extrap. from {args.sample} values)", naive_round)

    bound = spec.quantization_bound(total_weight)
    err = float(np.max(np.abs(split_mean - reference[0])))
    assert err <= bound, "packed mean outside the quantization bound"
    exact = packing.plain_fedavg(vectors, counts, clip=spec.clip)
    clipped = sum(u.clipped for u in updates)
    print(f"  accuracy: max |packed - FedAvg, same weights| = {err:.2e} (bound {bound:.2e}); "
          f"max |packed - FedAvg, exact counts| = {np.max(np.abs(split_mean - exact)):.2e}; "
          f"{clipped:,} values clipped and reported")
    for what in ("wall", "cpu"):
        naive_t, whole_t, split_t, numpy_t = (getattr(c, what) for c in (
            naive_round, whole_round, split_round, numpy_round))
        print(f"  ratio ({what}): online round split vs whole {whole_t / split_t:.2f}x faster; "
              f"vs per-value phe {naive_t / split_t:,.0f}x faster; vs numpy "
              f"{split_t / numpy_t:,.0f}x slower")
    loose = dataclasses.replace(spec, max_weight=100)
    print(f"  ciphertext / float32 bytes: {spec.update_bytes / (length * 4):.2f}x "
          f"({size_text(spec.update_bytes)} per party; with max_weight 100: "
          f"{loose.update_bytes / (length * 4):.2f}x; per-value phe: "
          f"{spec.ciphertext_bytes / 4:.0f}x)")


def _auc(y: np.ndarray, scores: np.ndarray) -> float:
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = y == 1
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2)
                 / (pos.sum() * (~pos).sum()))


def model_accuracy(pk, sk, args, rounds: int, rng) -> None:
    """A logistic model trained by FedAvg over the parties' synthetic data (sizes 200..5000
    rows), three ways: plaintext with the exact sample counts as weights, and through packed
    Paillier with the counts scaled to 1..max_weight (split decryption) or to 1..100. Prints
    each model's held-out AUC and how far its weights are from the plaintext model's."""
    features, parties = 12, args.parties
    truth = rng.normal(size=features + 1)

    def data(rows: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.hstack([rng.normal(size=(rows, features)), np.ones((rows, 1))])
        return x, (rng.random(rows) < 1 / (1 + np.exp(-(x @ truth)))).astype(float)

    counts = [int(c) for c in rng.integers(200, 5000, parties)]
    train = [data(c) for c in counts]
    x_test, y_test = data(20_000)

    def local(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        v = w.copy()
        for _ in range(5):
            v -= 0.5 * x.T @ (1 / (1 + np.exp(-(x @ v))) - y) / len(y)
        return v - w

    def fedavg(aggregate) -> np.ndarray:
        w = np.zeros(features + 1)
        for _ in range(rounds):
            w = w + aggregate([local(w, x, y) for x, y in train])
        return w

    def packed(max_weight: int):
        spec = packing.PackSpec.create(pk.n, features + 1, bits=args.bits, clip=1.0,
                                       max_parties=parties, max_weight=max_weight)
        weights = scaled_weights(counts, max_weight)
        plan = sd.layout(spec.ciphertexts, UNITS[:parties])
        key, width = sd.slice_key(sk), sd.plaintext_width(spec)
        enc = packing.Encryptor(pk, sk)

        def aggregate(updates: list[np.ndarray]) -> np.ndarray:
            total = packing.add_encrypted(spec, [packing.pack_update(spec, u, w, enc).ciphertexts
                                                 for u, w in zip(updates, weights, strict=True)])
            parts = {}
            for i in range(plan.count):
                ad = sd.associated_data(1, 1, 1, "0" * 64, i, plan.count)
                sealed = sd.seal_slice(key, ad, sd.decrypt_slice(spec, total, sk, plan, i), width)
                start, stop = plan.bounds(i)
                parts[i] = sd.open_slice(key, ad, sealed, stop - start, width, spec.n)
            return sd.reassemble(spec, plan, parts, sum(weights), parties)

        return aggregate

    plain = fedavg(lambda updates: packing.plain_fedavg(updates, counts))
    tight = fedavg(packed(args.max_weight))
    loose = fedavg(packed(100))
    aucs = [_auc(y_test, x_test @ w) for w in (plain, tight, loose)]
    print(f"\nmodel accuracy: logistic model, {parties} parties ({counts} rows), {rounds} FedAvg "
          f"rounds; held-out AUC: plaintext FedAvg (exact counts) {aucs[0]:.4f}, packed "
          f"max_weight {args.max_weight} {aucs[1]:.4f}, packed max_weight 100 {aucs[2]:.4f}; "
          f"max |w_packed - w_plain| {np.max(np.abs(tight - plain)):.1e} and "
          f"{np.max(np.abs(loose - plain)):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (seconds)")
    parser.add_argument("--parties", type=int, default=5)
    parser.add_argument("--sizes", default="10000,100000,1000000",
                        help="comma-separated lengths")
    parser.add_argument("--sample", type=int, default=200,
                        help="values per party timed for per-value phe")
    parser.add_argument("--max-weight", type=int, default=25)
    parser.add_argument("--bits", type=int, default=16)
    parser.add_argument("--key-bits", type=int, default=2048, choices=(2048, 3072))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes, args.sample = [1000, 5000], 10
    if not 2 <= args.parties <= len(UNITS):
        parser.error(f"--parties must be in 2..{len(UNITS)}")

    rng = np.random.default_rng(2018)
    pk, sk = generate_paillier_keypair(args.key_bits)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"secure aggregation: {args.parties} parties, {args.key_bits}-bit Paillier key, "
          f"phe {phe.__version__}, gmpy2 {gmpy2.version()}, {os.cpu_count()} CPU(s), "
          f"load average {load} at start")
    print(f"packing: {args.bits}-bit values, clip 1.0, max_weight {args.max_weight} (sample "
          f"counts scaled), max_parties {args.parties}")
    naive = naive_costs(pk, sk, args.parties, args.sample, rng)
    print(f"per-value phe, timed on {args.sample} values x {args.parties} parties (wall): "
          f"encrypt {secs(naive['enc'].wall)}/value, add {secs(naive['add'].wall)}/value, "
          f"decrypt {secs(naive['dec'].wall)}/value")
    model_accuracy(pk, sk, args, 5 if args.quick else 30, rng)
    for length in sizes:
        run_size(pk, sk, args, length, naive, rng)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nload average {load} at the end")


if __name__ == "__main__":
    main()
