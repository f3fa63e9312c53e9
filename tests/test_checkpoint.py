import pytest
import torch

from fastgan.errors import UserError
from fastgan.train import checkpoint


def _gen(step):
    return {"arch": "mlp", "kwargs": {"z_dim": 2, "width": 4}, "kind": "points",
            "dataset": "ring", "z_dim": 2, "state_dict": {"w": torch.full((2,), float(step))},
            "step": step}


def test_save_marks_complete_and_prunes(tmp_path):
    for step in (10, 20, 30, 40):
        checkpoint.save(tmp_path, step, {"step": step}, _gen(step), keep=2)
    done = checkpoint.complete(tmp_path)
    assert [p.name for p in done] == ["step-00000030", "step-00000040"]
    for p in done:
        assert (p / checkpoint.MARKER).exists()
    payload = checkpoint.load_generator(tmp_path)
    assert payload["step"] == 40
    state = torch.load(done[-1] / checkpoint.STATE, weights_only=True)
    assert state["step"] == 40


def test_incomplete_checkpoint_is_never_loaded(tmp_path):
    checkpoint.save(tmp_path, 10, {"step": 10}, _gen(10), keep=3)
    newer = checkpoint.save(tmp_path, 20, {"step": 20}, _gen(20), keep=3)
    (newer / checkpoint.MARKER).unlink()  # as if the job died before the marker
    assert checkpoint.load_generator(tmp_path)["step"] == 10
    with pytest.raises(UserError, match="incomplete"):
        checkpoint.find_generator(newer)


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        checkpoint.load_generator(tmp_path / "nope")
    with pytest.raises(UserError, match="no complete checkpoint"):
        checkpoint.load_generator(tmp_path)
    bad = tmp_path / "generator.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="generator.pt"):
        checkpoint.load_generator(bad)
