"""Feature extractors: the FID Inception graph loads the published state dict's layout;
the self-contained random-conv extractor is the same everywhere."""

import pytest
import torch

from fastgan.errors import UserError
from fastgan.metrics import features


def test_inception_has_the_published_layout(tmp_path):
    net = features.FIDInception()
    # torchvision's inception_v3 (27,161,264 parameters) less its auxiliary head
    # (3,326,696), with the TF graph's 1008 logits instead of 1000
    assert sum(p.numel() for p in net.parameters()) == 23_850_960
    state = net.state_dict()
    for key in ("Conv2d_1a_3x3.conv.weight", "Mixed_5b.branch5x5_2.bn.running_var",
                "Mixed_6e.branch7x7dbl_5.conv.weight", "Mixed_7c.branch3x3dbl_3b.bn.bias"):
        assert key in state
    # the file as pytorch-fid publishes it: no BatchNorm counters; an auxiliary head is
    # tolerated too (torchvision-style dumps carry one). build() makes a fresh instance,
    # initialised afresh: equal weights below mean the file was loaded
    published = {k: v.clone()
                 for k, v in state.items() if not k.endswith("num_batches_tracked")}
    published["AuxLogits.fc.weight"] = torch.zeros(1008, 768)
    path = tmp_path / features.INCEPTION_FILE
    torch.save(published, path)
    loaded = features.build("inception", device="cpu", inception=str(path))
    assert torch.equal(loaded.Mixed_6a.branch3x3.conv.weight,
                       published["Mixed_6a.branch3x3.conv.weight"])
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    out = loaded(images)
    assert out.shape == (2, 2048) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and (out >= 0).all()  # means of ReLU outputs


def test_missing_inception_weights_say_where_to_get_them(monkeypatch, tmp_path):
    monkeypatch.delenv(features.INCEPTION_ENV, raising=False)
    with pytest.raises(UserError, match="pt_inception-2015-12-05-6726825d.pth.*"
                       "--inception PATH or set FASTGAN_INCEPTION"):
        features.build("inception", device="cpu")
    with pytest.raises(UserError, match="no such file: .*nope.pth"):
        features.build("inception", device="cpu", inception=str(tmp_path / "nope.pth"))
    monkeypatch.setenv(features.INCEPTION_ENV, str(tmp_path / "env.pth"))
    with pytest.raises(UserError, match="env.pth"):
        features.build("inception", device="cpu")


def test_wrong_weights_files_are_named(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3)}, other)
    with pytest.raises(UserError, match="does not hold the FID Inception-v3 weights"):
        features.build("inception", device="cpu", inception=str(other))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="junk.pth.*not a readable weights file"):
        features.build("inception", device="cpu", inception=str(junk))


def test_randconv_is_deterministic_and_sees_differences():
    a, b = features.build("randconv", device="cpu"), features.build("randconv", device="cpu")
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    fa = a(images)
    assert fa.shape == (4, 512)
    assert torch.equal(fa, b(images))
    assert not torch.allclose(fa[0], fa[1])
    assert features.identity(a) == "randconv-v1"


def constant_extractor():  # a plug-in, as a user would write one
    class Mean:
        name, dim = "mean-colour", 3

        def __call__(self, images):
            return images.float().mean(dim=(2, 3))
    return Mean()


def test_randconv_draws_nothing_from_the_global_generator():
    """The training loop builds it (for the diversity signal) on rank 0 in the middle of
    training, and after a resume again: a draw would shift StyleGAN2's noise and the
    augmentations of every later step, so a resumed run would not be the straight one."""
    torch.manual_seed(0)
    before = torch.get_rng_state()
    features.RandConv()
    assert torch.equal(torch.get_rng_state(), before)


def test_plugins_load_by_module_and_name():
    ext = features.build("test_features:constant_extractor", device="cpu")
    assert ext.dim == 3 and ext(torch.zeros(2, 3, 8, 8, dtype=torch.uint8)).shape == (2, 3)
    with pytest.raises(UserError, match="cannot import no_such_module:f"):
        features.build("no_such_module:f", device="cpu")
    with pytest.raises(UserError, match="expected inception, randconv"):
        features.build("vgg", device="cpu")
