"""The checkpoint's state protocol (train/state.py): every stateful piece restored from
one description, and checkpoints written before it (format 1) still resumed exactly.

tests/data/format1/ holds two runs' first checkpoints as fastgan wrote them before the
state protocol (commit c842e47), beside the records the same command went on to write
(expected.jsonl). Resuming one with today's code must write the same records.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

from fastgan.cli import main as fastgan_main
from fastgan.metrics.records import read_records
from fastgan.train import checkpoint
from fastgan.train import state as train_state

FORMAT1 = Path(__file__).parent / "data" / "format1"
# the commands that wrote them (--out and --steps aside)
FLAGS = {
    "points": ["--data", "builtin:ring", "--width", "16", "--steps", "20", "--log-every",
               "5", "--ckpt-every", "10"],
    "images": ["--res", "16", "--width", "8", "--z-dim", "16", "--batch", "16", "--steps",
               "8", "--log-every", "2", "--ckpt-every", "4", "--ema-kimg", "1",
               "--precision", "fp16", "--accum", "2", "--r1-gamma", "1", "--r1-interval",
               "3", "--metric-samples", "64"],
}
# Not the training's numbers: timings, and diversity, whose real reference is the first
# real samples a process sees (after a resume, later ones)
NOT_TRAINING = {"img_s", "elapsed_s", "diversity"}


def _training_numbers(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in NOT_TRAINING} for r in records]


def _resume_format1(name: str, tmp_path: Path, cache_dir: str) -> tuple[list, list]:
    run = tmp_path / name
    shutil.copytree(FORMAT1 / name, run)
    expected = read_records(run / "expected.jsonl")
    ckpt_step = int(next((run / "checkpoints").iterdir()).name.split("-")[1])
    (run / "metrics.jsonl").write_text("".join(
        json.dumps(r) + "\n" for r in expected if r["step"] <= ckpt_step))
    assert fastgan_main(["train", *FLAGS[name], "--out", str(run), "--cache-dir", cache_dir,
                         "--no-progress"]) == 0
    return _training_numbers(read_records(run / "metrics.jsonl")), _training_numbers(expected)


def test_a_format1_checkpoint_of_2d_points_resumes_exactly(tmp_path, cache_dir):
    got, expected = _resume_format1("points", tmp_path, cache_dir)
    assert [r["step"] for r in got] == [5, 10, 15, 20]
    assert got == expected


@pytest.mark.slow  # a loader worker and a DCGAN: about 15 s
def test_a_format1_checkpoint_of_images_resumes_exactly(tmp_path, cache_dir):
    """fp16 loss scalers, EMA, lazy R1, accumulation and the loader's position: all of
    them come back from the old layout."""
    got, expected = _resume_format1("images", tmp_path, cache_dir)
    assert [r["step"] for r in got] == [2, 4, 6, 8]
    assert got == expected


def test_upgrade_renames_format1_pieces_and_keeps_the_rest():
    old = checkpoint.load_state(FORMAT1 / "points" / "checkpoints" / "step-00000010")
    new = train_state.upgrade(old)
    assert new["format"] == train_state.FORMAT
    assert set(new) - set(old) == {"format", "engine_G", "engine_D", "latents", "gan_step"}
    assert set(old) - set(new) == {"engines", "z_stream", "skips", "points"}
    assert torch.equal(new["latents"]["generator"], old["z_stream"])
    assert new["data"] == [old["points"]] * old["world"]
    assert train_state.upgrade(new) is new  # the current format is left alone
