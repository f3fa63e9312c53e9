"""The loader on 2 real ranks (gloo) x 2 DataLoader workers over uneven shards."""

import json

import pytest

from fastgan.data.sources import shard_set
from fastgan.data.stream import BatchStream, ImageBatches, make_plan
from fastgan.train import distributed
from ranks import free_port, set_rank_env, spawn
from shardsets import write_uneven_shards

SIZES = [3, 11, 7, 1, 9, 5, 13]  # 7 shards, 49 samples: nothing divides evenly


def _rank(rank, port, shards_dir, mode, out):
    set_rank_env(rank, 2, port)
    d = distributed.init("cpu")
    try:
        shards = shard_set(shards_dir)
        plan = make_plan(shards, mode=mode, world=d.world, workers=2, batch=4)
        batches = BatchStream(ImageBatches(shards, 8, plan, seed=1, rank=d.rank, shuffle=8))
        epochs = []
        for _ in range(2):
            keys, n = [], 0
            while True:  # one epoch, as the loader counts it
                next(batches)
                keys += batches.keys
                n += 1
                if batches.batch == 0:
                    break
            epochs.append({"keys": keys, "batches": n})
        everything = distributed.all_gather_object(
            {"epochs": epochs, "skips": batches.skip_counts()}, d)
        if d.rank == 0:
            with open(out, "w") as fh:
                json.dump(everything, fh)
    finally:
        distributed.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exact", "resampled"])
def test_two_ranks_two_workers_uneven_shards(tmp_path, mode):
    keys = write_uneven_shards(tmp_path / "s", SIZES)
    out = tmp_path / "result.json"
    spawn(_rank, (free_port(), str(tmp_path / "s"), mode, str(out)), 2)
    ranks = json.loads(out.read_text())
    for epoch in range(2):
        counts = [r["epochs"][epoch]["batches"] for r in ranks]
        assert counts[0] == counts[1] > 0  # the same number of batches on every rank
        if mode != "exact":
            continue
        seen = [k for r in ranks for k in r["epochs"][epoch]["keys"]]
        padding = sum(r["skips"][2] for r in ranks) // 2  # per epoch: the same each time
        assert set(seen) == set(keys)  # every sample, in every epoch
        assert len(seen) == len(keys) + padding
        assert padding < 4 * 4  # less than one batch per reader slot
        # no sample twice, except the padding that fills the slots' last batches
        assert len(seen) - len(set(seen)) == padding
    if mode == "exact":  # a new order each epoch
        assert ranks[0]["epochs"][0]["keys"] != ranks[0]["epochs"][1]["keys"]
