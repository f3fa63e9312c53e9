"""``fastgan eval CKPT``: FID, KID and mode metrics of a trained generator.

Every rank (under torchrun) generates its share of the samples and reads its share of
the real data; rank 0 gathers the statistics and reports. The samples do not depend on
the number of ranks: sample i's latent comes from block ``i // batch``'s own seeded
stream, and blocks are dealt out to ranks in turn, so one process and eight give the
same images, the same features, and (up to summation order) the same numbers.

Real statistics are cached under ``--cache-dir/fid-stats`` (npz: mean, scatter, the
first ``KID_REAL`` feature vectors), keyed by the shards (names, counts, and for local
files their sizes and times), the resolution, the number of images and the feature
extractor (for Inception, its file's hash): a second evaluation against the same data
reads one file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import models, sampling
from ..data import builtin
from ..data.eval_reader import OnePass
from ..data.sources import resolve_data
from ..errors import UserError
from ..train import distributed
from ..train.checkpoint import load_generator
from . import features as feature_extractors
from .fid import FeatureStats, fid_from_stats, kernel_distance

log = logging.getLogger("fastgan")

METRICS = ("fid", "kid", "modes")
KID_REAL = 10_000  # real feature vectors kept for KID (NVlabs' KID subsets are 1,000)
STATS_VERSION = 1


@dataclass
class EvalOptions:
    ckpt: str
    data: str | None = None  # default: the dataset the generator was trained on
    metrics: tuple[str, ...] = ("fid", "kid")
    features: str = "inception"
    inception: str | None = None
    num_gen: int = 50_000
    num_real: int | None = None  # None: every real image (points: 50,000 draws)
    batch: int = 64
    seed: int = 0
    device: str = "auto"
    workers: int = 1
    cache_dir: str | None = None
    use_ema: bool = True
    json_path: str | None = None
    truncation: float = 1.0  # psi of StyleGAN2's truncation trick (1: off)


def _block_z(seed: int, block: int, n: int, z_dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, block, 0xE7A1])
                                          .generate_state(1)[0]))
    return torch.randn(n, z_dim, generator=g)


def _stats_key(spec, res: int, num_real: int | None, extractor: str) -> str:
    shards = spec.shards
    files = []
    for url in shards.urls:
        try:
            st = os.stat(url)
            files.append([url, st.st_size, int(st.st_mtime)])
        except OSError:  # remote: its name and count are what we know
            files.append([url])
    blob = json.dumps({"v": STATS_VERSION, "files": files, "counts": shards.counts,
                       "res": res, "n": num_real, "features": extractor}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _cached(cache: Path) -> FeatureStats | None:
    if not cache.exists():
        return None
    try:
        with np.load(cache, allow_pickle=False) as f:
            stats = FeatureStats.from_arrays(f)
    except (OSError, ValueError, KeyError) as e:
        log.warning("ignoring unreadable cached statistics %s (%s)", cache, e)
        return None
    log.info("real statistics from %s (%d images)", cache, stats.n)
    return stats


def real_stats(spec, res: int, ext, opts: EvalOptions,
               d: distributed.Dist) -> FeatureStats | None:
    """Statistics of the real images on rank 0 (None elsewhere): from the cache, or read
    by every rank's share. Rank 0 alone looks in the cache and tells the others, which
    may not see the same filesystem."""
    ident = feature_extractors.identity(ext)
    label = spec.builtin or Path(spec.shards.urls[0]).parent.name or "data"
    key = _stats_key(spec, res, opts.num_real, ident)
    cache = Path(opts.cache_dir) / "fid-stats" / f"{label}-r{res}-{key}.npz"
    stats = _cached(cache) if d.is_main else None
    if distributed.all_gather_object(stats is not None, d)[0]:
        return stats
    ds = OnePass(spec.shards, res, rank=d.rank, world=d.world, workers=opts.workers,
                 batch=opts.batch, limit=opts.num_real)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=opts.workers)
    stats = FeatureStats(ext.dim, keep=KID_REAL)
    skipped = np.zeros(2, np.int64)
    for item in loader:
        if isinstance(item, dict):
            skipped += np.array(item["skips"][:2])
            continue
        stats.add(ext(item.to(d.device)).cpu())
    parts = distributed.all_gather_object(stats.to_arrays(), d)
    skipped = distributed.all_gather_object(skipped.tolist(), d)
    merged = FeatureStats(ext.dim, keep=KID_REAL)
    for part in parts:
        merged.merge(FeatureStats.from_arrays(part))
    bad = np.sum(skipped, axis=0)
    if d.is_main:
        if bad.any():
            log.warning("real data: skipped %d undecodable sample(s) and %d failed shard "
                        "read(s) of %d", bad[0], bad[1], ds.total)
        if merged.n < 2:
            raise UserError(f"--data: no readable real images in {opts.data}")
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **merged.to_arrays())
        os.replace(tmp, cache)
    return merged


def _point_stats(name: str, n: int, seed: int) -> FeatureStats:
    pts = builtin.POINT_SETS[name]().sample(n, np.random.default_rng([seed, 0xF1D]))
    stats = FeatureStats(2, keep=KID_REAL)
    stats.add(pts)
    return stats


def generated(G, payload: dict, ext, opts: EvalOptions, d: distributed.Dist,
              points: bool, mode_samples: int):
    """Statistics of ``num_gen`` generated samples, every rank its blocks; and the
    first ``mode_samples`` samples' outputs for the mode metrics (rank 0). Without an
    extractor (``ext`` None: no FID/KID asked) only those first samples are made."""
    b = opts.batch
    n = opts.num_gen if ext is not None or points else min(opts.num_gen, mode_samples)
    blocks = range(d.rank, -(-n // b), d.world)
    stats = FeatureStats(2 if points else ext.dim if ext is not None else 1)
    kept: dict[int, np.ndarray] = {}  # block -> features, for KID's first KID_REAL
    heads: dict[int, np.ndarray] = {}  # block -> outputs, for the mode metrics
    c_dim = payload["kwargs"].get("c_dim", 0)
    for k in blocks:
        size = min(b, n - k * b)
        z = _block_z(opts.seed, k, size, payload["z_dim"]).to(d.device)
        c = sampling.class_cycle(size, c_dim, d.device)
        out = sampling.generate(G, z, chunk=b, c=c, truncation_psi=opts.truncation)
        if points:
            raw = feats = out.numpy()
        else:
            raw = sampling.to_uint8(out)  # quantised, as real images are
            feats = None if ext is None else ext(
                torch.from_numpy(raw).permute(0, 3, 1, 2).to(d.device)).cpu().numpy()
        if feats is None:
            heads[k] = raw
            continue
        stats.add(feats)
        if k * b < KID_REAL:
            kept[k] = feats.astype(np.float32)
        if k * b < mode_samples:
            heads[k] = raw
    parts = distributed.all_gather_object((stats.to_arrays(), kept, heads), d)
    merged = FeatureStats(stats.dim, keep=KID_REAL)
    kept_all, heads_all = {}, {}
    for arrays, kp, hd in parts:
        merged.merge(FeatureStats.from_arrays(arrays))
        kept_all.update(kp)
        heads_all.update(hd)
    order = sorted(kept_all)
    feats = np.concatenate([kept_all[k] for k in order])[:KID_REAL] if order else None
    head = np.concatenate([heads_all[k] for k in sorted(heads_all)])[:mode_samples] \
        if heads_all else None
    return merged, feats, head


def evaluate(opts: EvalOptions) -> dict:
    d = distributed.init(opts.device)
    try:
        return _evaluate(opts, d)
    finally:
        distributed.shutdown()


def _evaluate(opts: EvalOptions, d: distributed.Dist) -> dict:
    start = time.perf_counter()
    payload = load_generator(opts.ckpt)
    if payload["arch"] not in models.ARCHS:
        raise UserError(f"{opts.ckpt}: unknown architecture {payload['arch']!r}")
    state = payload["state_dict"] if opts.use_ema else payload.get("G_state_dict")
    if state is None:
        raise UserError(f"--generator trained: {opts.ckpt} was trained without EMA: its "
                        "one generator is the trained one (leave out --generator)")
    G = models.build_generator(payload["arch"], payload["kwargs"])
    G.load_state_dict(state)
    G.to(d.device).eval()
    sampling.check_truncation(G, opts.truncation, payload["arch"], payload.get("step"))
    points = payload["kind"] == "points"
    trained_on = payload["dataset"]  # an embedded name, or the --data the run was given
    data = opts.data = opts.data or (f"builtin:{trained_on}"
                                     if trained_on in builtin.BUILTIN_NAMES else trained_on)
    res = payload["kwargs"].get("res")
    spec = resolve_data(data, res or 32, opts.cache_dir)
    if (spec.kind == "points") != points:
        raise UserError(f"--data: {data} holds {spec.kind}, the generator makes "
                        f"{payload['kind']}")
    wanted = set(opts.metrics)
    if "modes" in wanted and spec.builtin is None:
        raise UserError("--metrics modes: mode metrics exist for the embedded datasets "
                        "(builtin:shapes, ring, grid) only")
    need_stats = bool(wanted & {"fid", "kid"})
    ext = None if points or not need_stats else feature_extractors.build(
        opts.features, device=d.device, inception=opts.inception)
    suffix = "" if ext is None or opts.features == "inception" else f"_{ext.name}"
    mode_samples = (builtin.POINT_METRIC_SAMPLES if points else 2048) if "modes" in wanted else 0
    real = None
    if need_stats:
        real = (_point_stats(spec.builtin, opts.num_real or 50_000, opts.seed) if points
                else real_stats(spec, res, ext, opts, d))
    fake, fake_feats, head = generated(G, payload, ext, opts, d, points, mode_samples)
    result = {"ckpt": str(opts.ckpt), "step": payload.get("step"), "data": data,
              "generator": "ema" if payload.get("ema") and opts.use_ema else "trained",
              "truncation": opts.truncation,
              "features": "points" if points else (ext and feature_extractors.identity(ext)),
              "num_gen": opts.num_gen, "num_real": real.n if real else None}
    if d.is_main:
        if "fid" in wanted:
            result[f"fid{suffix}"] = round(fid_from_stats(real, fake), 5)
        if "kid" in wanted:
            mean, std = kernel_distance(real.features(), fake_feats)
            result[f"kid{suffix}"], result[f"kid{suffix}_std"] = round(mean, 7), round(std, 7)
        if "modes" in wanted:
            if points:
                result.update(builtin.POINT_SETS[spec.builtin]().metrics(head))
            else:
                result.update(builtin.shape_mode_metrics(builtin.classify_shapes(head)))
        result["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(result))
        if opts.json_path:
            Path(opts.json_path).write_text(json.dumps(result, indent=2) + "\n")
    return result


def parse_metrics(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(m.strip() for m in value.split(",") if m.strip()))
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise UserError(f"--metrics: unknown {', '.join(bad) or repr(value)} (choose from "
                        f"{', '.join(METRICS)})")
    return names
