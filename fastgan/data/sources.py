"""What ``--data`` names: an embedded dataset, or a set of tar shards and what is known
about them (sample counts, resolution, label names).

Shards can be given as a directory (with or without ``manifest.json``), a manifest
path or ``http(s)://.../manifest.json`` URL, a brace pattern
(``shard-{000000..000127}.tar``), ``http(s)://`` URLs or ``pipe:`` commands. Sample
counts come from the manifest; for local shards without one they can be counted from
the tar headers (fast: data is seeked over); for remote shards without one they stay
unknown, which the exact sampling mode refuses.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import urllib.request
from dataclasses import dataclass

import webdataset as wds

from ..errors import UserError
from . import builtin
from .shards import MANIFEST, read_manifest
from .tar import TarError, count_samples

log = logging.getLogger(__name__)

_REMOTE = ("http://", "https://", "pipe:")


@dataclass
class ShardSet:
    urls: list[str]
    counts: list[int] | None = None  # samples per shard, when known
    resolution: int | None = None  # the images' size, when the manifest says
    labels: list[str] | None = None

    @property
    def total(self) -> int | None:
        return None if self.counts is None else sum(self.counts)


@dataclass
class DataSpec:
    """``--data`` resolved: image shards, or an embedded 2-D point set."""

    kind: str  # "images" or "points"
    shards: ShardSet | None
    builtin: str | None = None  # name of the embedded dataset, if any


def parse_data(spec: str) -> str | None:
    """The embedded dataset named by ``builtin:NAME`` (validated), else None."""
    if not spec.startswith("builtin:"):
        return None
    name = spec.split(":", 1)[1]
    if name not in builtin.BUILTIN_NAMES:
        raise UserError(f"--data: unknown embedded dataset {spec!r} (choose from "
                        + ", ".join("builtin:" + n for n in builtin.BUILTIN_NAMES) + ")")
    return name


def resolve_data(spec: str, res: int, cache_dir: str, *, count: bool = True,
                 subset: int | None = None) -> DataSpec:
    """Turn ``--data`` into a shard set (building the embedded shards when needed; of
    their first ``subset`` images when given)."""
    name = parse_data(spec)
    if subset is not None and subset > builtin.SHAPES_COUNT:
        raise UserError(f"--subset: {spec} has {builtin.SHAPES_COUNT} images, not {subset}")
    if name in builtin.POINT_SETS:
        return DataSpec("points", None, builtin=name)
    if name is not None:
        try:
            manifest = builtin.builtin_shards(name, res, cache_dir,
                                              subset or builtin.SHAPES_COUNT)
        except OSError as e:
            raise UserError(f"--cache-dir: cannot write the {spec} shards under {cache_dir}: "
                            f"{e.strerror or e}") from None
        return DataSpec("images", _from_manifest(manifest), builtin=name)
    return DataSpec("images", shard_set(spec, count=count))


def shard_set(spec: str, *, count: bool = False) -> ShardSet:
    """The shards named by ``spec``; ``count``: count local shards that lack a manifest."""
    if spec.startswith(("http://", "https://")) and spec.endswith(".json"):
        return _from_manifest(spec)
    if spec.startswith(_REMOTE + ("file:",)):
        return ShardSet(wds.shardlists.expand_urls(spec))
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, MANIFEST)):
            return _from_manifest(os.path.join(path, MANIFEST))
        urls = sorted(glob.glob(os.path.join(path, "*.tar")))
        if not urls:
            raise UserError(f"--data: no .tar shards in directory {spec}")
    elif path.endswith(".json"):
        if not os.path.exists(path):
            raise UserError(f"--data: no such manifest: {spec}")
        return _from_manifest(path)
    else:
        urls = wds.shardlists.expand_urls(path)
        missing = [u for u in urls if not os.path.exists(u)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(f"--data: no such file: {missing[0]}{more}")
    return ShardSet(urls, _count_local(urls) if count else None)


def _count_local(urls: list[str]) -> list[int] | None:
    if len(urls) > 16:
        log.info("counting the samples of %d shards (no %s: `fastgan shards` writes one)",
                 len(urls), MANIFEST)
    counts = []
    for url in urls:
        try:
            counts.append(count_samples(url))
        except (OSError, TarError) as e:
            log.warning("cannot count the samples of %s (%s): counted as empty", url, e)
            counts.append(0)
    return counts


def _from_manifest(path: str) -> ShardSet:
    try:
        if path.startswith(("http://", "https://")):
            with urllib.request.urlopen(path, timeout=60) as r:
                manifest = json.loads(r.read())
            base = path.rsplit("/", 1)[0] + "/"
        else:
            manifest = read_manifest(path)
            base = os.path.dirname(path)
        names = [s["name"] for s in manifest["shards"]]
        counts = [int(s["count"]) for s in manifest["shards"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--data: unreadable manifest {path}: {e}") from None
    if not names:
        raise UserError(f"--data: manifest {path} lists no shards")
    urls = [base + n if "://" in base else os.path.join(base, n) for n in names]
    return ShardSet(urls, counts, manifest.get("resolution"), manifest.get("labels"))
