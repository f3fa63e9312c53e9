"""ADA's augmentations, each against its definition with explicit parameters, and the
controller that sets p: identity at p = 0, differentiable, no host reads."""

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch

from fastgan.bench.ops import OpCounter
from fastgan.train import ada as A
from fastgan.train.distributed import Dist, all_reduce_sum

N, H, W = 4, 16, 16


def _random_images(n=N, c=3, h=H, w=W, seed=0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _geometry(**fields) -> A.Geometry:
    return dataclasses.replace(A.Geometry.identity(N), **fields)


def _colour(**fields) -> A.Colour:
    return dataclasses.replace(A.Colour.identity(N), **fields)


def _per_sample(value: float) -> torch.Tensor:
    return torch.full((N,), float(value))


def _resampled(images: torch.Tensor) -> torch.Tensor:
    """``images`` through the up/warp/down path with the identity map: what a flip or a
    quarter turn must equal, flipped or turned (the gate in ``warp`` skips the path for
    an exact identity, so a shift of 1e-7 pixels stands in for it)."""
    nudge = _geometry(frac_shift=torch.full((N, 2), 1e-7))
    return A.warp(images, A.geometry_matrix(nudge))


def _blob(n: int, h: int, w: int, centre_x, centre_y, sigma_x=2.5, sigma_y=2.5):
    """A Gaussian at (centre_x, centre_y) pixels from the image centre: band-limited, so
    the resampling reproduces a transformed blob to within its filter's error."""
    ys = (torch.arange(h) + 0.5 - h / 2).view(1, h, 1)
    xs = (torch.arange(w) + 0.5 - w / 2).view(1, 1, w)
    cx = torch.as_tensor(centre_x, dtype=torch.float32).view(-1, 1, 1)
    cy = torch.as_tensor(centre_y, dtype=torch.float32).view(-1, 1, 1)
    sx = torch.as_tensor(sigma_x, dtype=torch.float32).view(-1, 1, 1)
    sy = torch.as_tensor(sigma_y, dtype=torch.float32).view(-1, 1, 1)
    g = torch.exp(-((xs - cx) ** 2 / (2 * sx ** 2) + (ys - cy) ** 2 / (2 * sy ** 2)))
    return g.unsqueeze(1).expand(n, 3, h, w).contiguous()


# --- p = 0: the identity, exactly -------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
def test_p_zero_returns_the_images_unchanged(channels):
    x = _random_images(c=channels)
    pipe = A.AugmentPipe(torch.tensor(0.0), generator=torch.Generator().manual_seed(1))
    assert torch.equal(pipe(x), x)


def test_p_zero_draws_identity_parameters():
    p = torch.tensor(0.0)
    g = A.draw_geometry(64, p, H, W, generator=torch.Generator().manual_seed(0))
    c = A.draw_colour(64, p, generator=torch.Generator().manual_seed(0))
    assert torch.equal(A.geometry_matrix(g), torch.eye(3).expand(64, 3, 3))
    assert torch.equal(A.colour_matrix(c), torch.eye(4).expand(64, 4, 4))


def test_p_one_changes_every_sample():
    x = _random_images(n=32)
    pipe = A.AugmentPipe(torch.tensor(1.0), generator=torch.Generator().manual_seed(0))
    y = pipe(x)
    assert ((y - x).abs().amax(dim=(1, 2, 3)) > 1e-3).all()


def test_p_one_draws_within_the_strengths():
    g = A.draw_geometry(256, torch.tensor(1.0), 32, 32,
                        generator=torch.Generator().manual_seed(0))
    assert set(g.flip.tolist()) == {0.0, 1.0}
    assert set(g.quarter_turns.tolist()) == {0.0, 1.0, 2.0, 3.0}
    assert torch.equal(g.shift, g.shift.round()) and g.shift.abs().max() == 4  # 32 / 8
    assert g.pre_rotation.abs().max() <= math.pi and g.post_rotation.abs().std() > 0.5
    c = A.draw_colour(256, torch.tensor(1.0), generator=torch.Generator().manual_seed(0))
    assert set(c.luma_flip.tolist()) == {0.0, 1.0}
    assert abs(float(c.brightness.std()) - 0.2) < 0.05
    assert abs(float(c.contrast.log2().std()) - 0.5) < 0.1


def test_rotations_before_and_after_together_happen_with_probability_p():
    g = A.draw_geometry(20000, torch.tensor(0.5), H, W,
                        generator=torch.Generator().manual_seed(0))
    either = ((g.pre_rotation != 0) | (g.post_rotation != 0)).float().mean()
    assert abs(float(either) - 0.5) < 0.02


# --- geometry, one op at a time ---------------------------------------------------------

def test_resampling_with_the_identity_map_keeps_the_image():
    blob = _blob(N, H, W, 1.0, -2.0)
    assert (_resampled(blob) - blob).abs().max() < 5e-3
    x = _random_images()
    assert (_resampled(x) - x).abs().max() < 0.05  # noise up to Nyquist: the filter's error


def test_xflip_mirrors_left_right():
    x = _random_images()
    y = A.warp(x, A.geometry_matrix(_geometry(flip=_per_sample(1))))
    assert torch.allclose(y, _resampled(x).flip(3), atol=1e-5)


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_rotate90_is_torch_rot90(turns):
    x = _random_images()
    y = A.warp(x, A.geometry_matrix(_geometry(quarter_turns=_per_sample(turns))))
    assert torch.allclose(y, torch.rot90(_resampled(x), turns, dims=(2, 3)), atol=1e-5)


def test_integer_translation_shifts_by_whole_pixels():
    x = _random_images()
    shift = torch.tensor([[2.0, 0.0], [0.0, -3.0], [-1.0, 1.0], [0.0, 0.0]])
    y = A.warp(x, A.geometry_matrix(_geometry(shift=shift)))
    r = _resampled(x)
    assert torch.allclose(y[0, :, :, 2:], r[0, :, :, :-2], atol=1e-5)   # right by 2
    assert torch.allclose(y[1, :, :-3, :], r[1, :, 3:, :], atol=1e-5)   # up by 3
    assert torch.allclose(y[2, :, 1:, :-1], r[2, :, :-1, 1:], atol=1e-5)  # left 1, down 1
    assert torch.equal(y[3], x[3])


BLOB_CASES = {
    # op: (geometry fields, where the blob at (3, 0) with sigma 2.5 lands, its sigmas)
    "scale": (dict(scale=_per_sample(1.25)), (3.75, 0.0), (3.125, 3.125)),
    "pre_rotation": (dict(pre_rotation=_per_sample(math.pi / 2)), (0.0, 3.0), (2.5, 2.5)),
    "post_rotation": (dict(post_rotation=_per_sample(-math.pi / 4)),
                      (3 / math.sqrt(2), -3 / math.sqrt(2)), (2.5, 2.5)),
    "aniso": (dict(aniso=_per_sample(1.25)), (3.75, 0.0), (3.125, 2.0)),
    "frac_shift": (dict(frac_shift=torch.tensor([[0.5, -1.25]]).expand(N, 2)), (3.5, -1.25),
                   (2.5, 2.5)),
}


@pytest.mark.parametrize("op", sorted(BLOB_CASES))
def test_general_geometric_ops_move_a_blob_where_the_definition_says(op):
    fields, (cx, cy), (sx, sy) = BLOB_CASES[op]
    blob = _blob(N, 24, 24, 3.0, 0.0)
    y = A.warp(blob, A.geometry_matrix(_geometry(**fields)))
    expected = _blob(N, 24, 24, cx, cy, sx, sy)
    # the centre: the corners of a rotated image show the mirror images of the blob
    assert (y - expected)[:, :, 6:-6, 6:-6].abs().max() < 0.01


def test_rotation_by_a_full_turn_over_two_rotations_is_near_identity():
    blob = _blob(N, H, W, 2.0, 1.0)
    g = _geometry(pre_rotation=_per_sample(2.0), post_rotation=_per_sample(-2.0))
    assert (A.warp(blob, A.geometry_matrix(g)) - blob).abs().max() < 5e-3


def test_rotation_does_not_alias_a_checkerboard():
    """A pixel checkerboard is all Nyquist: rotating it by 45 degrees puts its energy
    above what the image can hold, so a band-limited resampler must remove it, not fold
    it back as a pattern (plain bilinear sampling leaves an rms of 0.31, peaks of 0.77;
    what remains here is the filter's response past Nyquist, as with StyleGAN2-ADA's
    wavelet)."""
    yx = torch.arange(32).view(32, 1) + torch.arange(32).view(1, 32)
    board = (yx % 2 * 2 - 1).float().expand(N, 3, 32, 32).contiguous()
    y = A.warp(board, A.geometry_matrix(_geometry(pre_rotation=_per_sample(math.pi / 4))))
    centre = y[:, :, 8:-8, 8:-8]
    assert centre.square().mean().sqrt() < 0.12 and centre.abs().max() < 0.25


# --- colour, one op at a time -----------------------------------------------------------

def _recoloured(x: torch.Tensor, **fields) -> torch.Tensor:
    return A.recolour(x, A.colour_matrix(_colour(**fields)))


def test_brightness_adds():
    x = _random_images()
    assert torch.allclose(_recoloured(x, brightness=_per_sample(0.3)), x + 0.3, atol=1e-6)


def test_contrast_multiplies_around_mid_grey():
    x = _random_images()
    assert torch.allclose(_recoloured(x, contrast=_per_sample(1.5)), x * 1.5, atol=1e-6)


def test_luma_flip_mirrors_grey_around_mid_grey_and_keeps_chroma():
    grey = _random_images(c=1).expand(N, 3, H, W)
    assert torch.allclose(_recoloured(grey, luma_flip=_per_sample(1)), -grey, atol=1e-6)
    x = _random_images()
    luma = x.mean(dim=1, keepdim=True)
    assert torch.allclose(_recoloured(x, luma_flip=_per_sample(1)), x - 2 * luma, atol=1e-6)


def test_hue_rotation_by_a_third_turn_cycles_the_channels_and_keeps_grey():
    x = _random_images()
    y = _recoloured(x, hue=_per_sample(2 * math.pi / 3))
    assert torch.allclose(y, x[:, [2, 0, 1]], atol=1e-6)  # red becomes green
    grey = _random_images(c=1).expand(N, 3, H, W)
    assert torch.allclose(_recoloured(grey, hue=_per_sample(1.0)), grey, atol=1e-6)


def test_saturation_scales_the_chroma():
    x = _random_images()
    luma = x.mean(dim=1, keepdim=True)
    assert torch.allclose(_recoloured(x, saturation=_per_sample(0.0)), luma.expand_as(x),
                          atol=1e-6)
    assert torch.allclose(_recoloured(x, saturation=_per_sample(2.0)), luma + 2 * (x - luma),
                          atol=1e-6)


def test_grey_images_take_the_grey_part_of_the_colour_map():
    x = _random_images(c=1)
    assert torch.allclose(_recoloured(x, brightness=_per_sample(0.3), contrast=_per_sample(2)),
                          x * 2 + 0.6, atol=1e-6)
    assert torch.allclose(_recoloured(x, luma_flip=_per_sample(1)), -x, atol=1e-6)
    assert torch.allclose(_recoloured(x, hue=_per_sample(1), saturation=_per_sample(3)), x,
                          atol=1e-6)


# --- gradients and precision ------------------------------------------------------------

OPS = {
    "flip": ("geometry", dict(flip=_per_sample(1))),
    "rotate90": ("geometry", dict(quarter_turns=_per_sample(1))),
    "shift": ("geometry", dict(shift=torch.tensor([[1.0, -2.0]]).expand(N, 2))),
    "scale": ("geometry", dict(scale=_per_sample(0.8))),
    "rotation": ("geometry", dict(pre_rotation=_per_sample(0.3),
                                  post_rotation=_per_sample(-1.0))),
    "aniso": ("geometry", dict(aniso=_per_sample(1.2))),
    "frac_shift": ("geometry", dict(frac_shift=torch.tensor([[0.3, 0.7]]).expand(N, 2))),
    "brightness": ("colour", dict(brightness=_per_sample(0.2))),
    "contrast": ("colour", dict(contrast=_per_sample(1.4))),
    "luma_flip": ("colour", dict(luma_flip=_per_sample(1))),
    "hue": ("colour", dict(hue=_per_sample(1.0))),
    "saturation": ("colour", dict(saturation=_per_sample(1.7))),
}


@pytest.mark.parametrize("op", sorted(OPS))
def test_gradient_flows_through_each_op(op):
    kind, fields = OPS[op]
    x = _random_images().requires_grad_()
    if kind == "geometry":
        y = A.warp(x, A.geometry_matrix(_geometry(**fields)))
    else:
        y = _recoloured(x, **fields)
    weights = _random_images(seed=1)
    (y * weights).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pipeline_under_bf16_autocast_keeps_dtype_and_gradients(dtype):
    x = _random_images(n=8).to(dtype).requires_grad_()
    pipe = A.AugmentPipe(torch.tensor(0.8), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = pipe(x)
    assert y.dtype == dtype
    y.float().square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_r1_penalty_through_the_pipeline_reaches_d():
    """GANStep's R1 penalty differentiates D(aug(real)) with respect to the real images
    and then differentiates the penalty with respect to D: the pipeline must be twice
    differentiable (grid_sample's double backward included)."""
    x = _random_images(n=2).requires_grad_()
    weight = torch.randn(2, 3, 3, 3, generator=torch.Generator().manual_seed(0),
                         requires_grad=True)
    pipe = A.AugmentPipe(torch.tensor(1.0), generator=torch.Generator().manual_seed(0))
    logits = torch.nn.functional.conv2d(pipe(x), weight).square().sum()
    (grad,) = torch.autograd.grad(logits, x, create_graph=True)
    grad.square().sum().backward()
    assert torch.isfinite(weight.grad).all() and weight.grad.abs().sum() > 0


def test_seeded_generator_reproduces_the_augmentation():
    x = _random_images()
    a = A.AugmentPipe(torch.tensor(0.7), generator=torch.Generator().manual_seed(3))(x)
    b = A.AugmentPipe(torch.tensor(0.7), generator=torch.Generator().manual_seed(3))(x)
    assert torch.equal(a, b)


# --- no host reads ----------------------------------------------------------------------

class _ReadsAndHostData(OpCounter):
    """OpCounter, plus the tensors made from host data (``torch.tensor(...)``): on a GPU
    each is a copy from the host that waits for the device to drain its queue."""

    def __init__(self):
        super().__init__()
        self.from_host = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == "lift_fresh":
            self.from_host += 1
        return super().__torch_dispatch__(func, types, args, kwargs)


def test_augmenting_and_controlling_read_nothing_back_to_the_host():
    """Runs in ~0.5 s, after a one-time ~5 s import of torch._dynamo by the first
    dispatch mode in the process (the fast tier's compile tests pay it anyway)."""
    p = A.AdaptiveP(0.3, interval=2, kimg=1,
                    all_reduce_sum=functools.partial(all_reduce_sum,
                                                     d=Dist(0, 1, 0, torch.device("cpu"))))
    pipe = A.AugmentPipe(p.p)
    x = _random_images(n=2, h=8, w=8).requires_grad_()
    pipe(x)  # the resampling filter is made once per device, from host data
    with _ReadsAndHostData() as counter:
        y = pipe(x)
        y.square().sum().backward()
        for _ in range(2):  # the second step updates p
            p.accumulate(y.detach().mean(dim=(1, 2, 3)))
            p.step()
        p.load_state_dict(p.state_dict())
    assert counter.total_reads == 0, dict(counter.reads)
    assert counter.from_host == 0


# --- the controller ---------------------------------------------------------------------

def _feed(p: A.AdaptiveP, logit: float, steps: int, batch: int = 8) -> None:
    for _ in range(steps):
        p.accumulate(torch.full((batch, 1), logit))
        p.step()


def test_overfitting_d_raises_p_by_the_images_seen_over_kimg():
    p = A.AdaptiveP(0.0, target=0.6, interval=4, kimg=0.1)
    _feed(p, 2.0, 3)
    assert float(p.p) == 0.0  # moves only every interval steps
    _feed(p, 2.0, 1)
    assert float(p.r_t) == 1.0
    assert float(p.p) == pytest.approx(32 / 100)  # batch 8 x 4 steps / (0.1 kimg)
    _feed(p, 3.0, 40)
    assert float(p.p) == 1.0  # clamped


def test_underfitting_d_lowers_p_to_zero():
    p = A.AdaptiveP(0.5, target=0.6, interval=4, kimg=0.1)
    _feed(p, -1.0, 4)
    assert float(p.r_t) == -1.0 and float(p.p) == pytest.approx(0.5 - 0.32)
    _feed(p, -1.0, 8)
    assert float(p.p) == 0.0


def test_r_t_is_the_mean_sign_of_the_real_logits():
    p = A.AdaptiveP(0.2, target=0.6, interval=2, kimg=1)
    p.accumulate(torch.tensor([1.0, 2.0, -3.0, 4.0]))
    p.step()
    p.accumulate(torch.tensor([5.0, -6.0, 7.0, 8.0]))
    p.step()
    assert float(p.r_t) == pytest.approx(0.5)  # 6 positive, 2 negative
    assert float(p.p) == pytest.approx(0.2 - 8 / 1000)


def test_all_reduced_sums_count_every_ranks_images():
    two_ranks = functools.partial(torch.mul, other=2)  # two ranks that saw the same batch
    p = A.AdaptiveP(0.0, interval=1, kimg=1, all_reduce_sum=two_ranks)
    _feed(p, 1.0, 1, batch=10)
    assert float(p.r_t) == 1.0 and float(p.p) == pytest.approx(20 / 1000)


def test_fixed_p_stays_and_still_measures_r_t():
    p = A.AdaptiveP.fixed(0.25)
    _feed(p, 1.0, 8)
    assert float(p.p) == 0.25 and float(p.r_t) == 1.0


def test_state_round_trips_in_place():
    p = A.AdaptiveP(0.0, interval=4, kimg=0.1)
    _feed(p, 1.0, 6)  # one update, then two steps accumulated
    state = p.state_dict()
    restored = A.AdaptiveP(0.0, interval=4, kimg=0.1)
    pipe = A.AugmentPipe(restored.p)
    restored.load_state_dict(state)
    assert pipe.p is restored.p and float(pipe.p) == float(p.p) > 0
    assert torch.equal(restored.sums, p.sums) and restored.steps == p.steps == 2
    _feed(p, 1.0, 2)
    _feed(restored, 1.0, 2)
    assert float(restored.p) == float(p.p) and float(restored.r_t) == float(p.r_t)


def test_rpgan_counts_a_real_image_as_judged_real_above_the_fakes_mean():
    """Under --loss rpgan only differences of logits mean something: r_t is the share of
    real logits above the generated batch's mean, whatever the common offset."""
    p = A.AdaptiveP(0.0, interval=1, kimg=1)
    real, fake = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.5, 3.5])  # mean 2.5
    for offset in (0.0, 100.0):
        assert float(p.accumulate(real + offset, fake + offset)) == 0.0  # 2 above, 2 below
        p.step()
        assert float(p.r_t) == 0.0
    assert float(p.accumulate(real, fake - 10)) == 1.0


def test_non_finite_logits_are_left_out_of_r_t():
    p = A.AdaptiveP(0.0, target=0.6, interval=1, kimg=1)
    batch_r_t = p.accumulate(torch.tensor([1.0, float("nan"), float("inf"), -1.0, 2.0]))
    p.step()
    assert float(batch_r_t) == pytest.approx(1 / 3) == float(p.r_t)
    assert float(p.p) == 0.0  # 3 images counted, below the target: p stays at 0
    p.accumulate(torch.full((4,), float("nan")))
    p.step()  # nothing counted: nothing moves
    assert float(p.r_t) == pytest.approx(1 / 3) and float(p.p) == 0.0


def test_another_world_size_keeps_p_and_restarts_the_count():
    p = A.AdaptiveP(0.0, interval=4, kimg=0.1)
    _feed(p, 1.0, 6)
    restored = A.AdaptiveP(0.0, interval=4, kimg=0.1)
    restored.load_other_world([p.state_dict(), p.state_dict()])
    assert float(restored.p) == float(p.p) > 0 and float(restored.r_t) == 1.0
    assert restored.steps == 0 and not restored.sums.any()


# --- in the GAN step ----------------------------------------------------------------------

def _ada_step(augment, loss="bce"):
    from fastgan import models
    from fastgan.train import engines
    from fastgan.train.build import train_gan
    from fastgan.train.phases import Objective

    torch.manual_seed(0)
    g_kw, d_kw = models.model_kwargs("dcgan", res=8, z_dim=8, width=4, pack=1, c_dim=0,
                                     scale=1.0, latent_modes=0)
    G = models.build_generator("dcgan", g_kw)
    D = models.build_discriminator("dcgan", d_kw)
    cpu = Dist(0, 1, 0, torch.device("cpu"))
    opts = engines.EngineOptions(strategy="none", precision="fp32", micro_batch=8, accum=1,
                                 grad_clip=0.0)
    return train_gan(G, D, images=True, opts=opts, dist=cpu, lr_g=1e-3, lr_d=1e-3,
                     betas=(0.0, 0.99), objective=Objective(loss), augment=augment).step


@pytest.mark.parametrize("loss", ["bce", "rpgan"])
def test_the_gan_step_feeds_d_real_logits_to_p_and_records_p_and_r_t(loss):
    """--augment ada in the step: D main counts its real logits, p moves every interval
    by sign(r_t - target) x images / (kimg x 1000), and the records hold the p the
    augmentations used and the r_t of those steps."""
    from fastgan.train.augment import Augmentation

    step = _ada_step(Augmentation("ada", target=0.0, interval=2, kimg=0.016), loss)
    real = _random_images(n=8, h=8, w=8)
    for i in (1, 2):
        step(real, torch.randn(8, 8), i)
    stats = step.take_stats()
    assert stats["augment_p"] == 0.0  # p moves after the 2nd step's augmentations
    r_t = float(step.ada.r_t)
    assert stats["r_t"] == pytest.approx(r_t, abs=1e-6)  # equal batches: mean of means
    assert r_t != 0.0
    assert float(step.ada.p) == pytest.approx(max(0.0, math.copysign(1.0, r_t)))  # 16 / 16
    step(real, torch.randn(8, 8), 3)
    assert step.take_stats()["augment_p"] == float(step.ada.p)


def test_fixed_p_augments_at_that_p_and_diffaug_has_no_controller():
    from fastgan.train.augment import Augmentation

    fixed = _ada_step(Augmentation("ada", p=0.3))
    assert not fixed.ada.adaptive and float(fixed.ada.p) == pytest.approx(0.3)
    assert fixed.aug.p is fixed.ada.p
    assert _ada_step(Augmentation("diffaug")).ada is None
    assert _ada_step(Augmentation()).ada is None


# --- the controller against a D that overfits ----------------------------------------------

class DatasetGenerator(torch.nn.Module):
    """A perfect G for the test below: each sample is an image of the dataset (from a
    pool that D never sees as real), picked by its latent."""

    def __init__(self, pool: torch.Tensor):
        super().__init__()
        self.register_buffer("pool", pool)
        self.unused = torch.nn.Parameter(torch.zeros(()))  # for G's optimizer

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        pick = (z[:, 0].abs() * 1e6).long() % len(self.pool)
        return self.pool[pick] + 0 * self.unused


def _shapes(first: int, count: int, res: int = 16) -> torch.Tensor:
    from fastgan.data.builtin import shapes_sample

    images = np.stack([shapes_sample(i, res)[0] for i in range(first, first + count)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def _p_and_r_t_while_d_learns(real_pool: torch.Tensor, fake_pool: torch.Tensor,
                              steps: int) -> tuple[list[float], list[float]]:
    """ADA's p after every 50 steps, and the records' r_t of each 50, as a DCGAN D
    (res 16, width 16) learns to tell ``real_pool``'s images from ``fake_pool``'s."""
    from fastgan import models
    from fastgan.train import engines
    from fastgan.train.augment import Augmentation
    from fastgan.train.build import train_gan

    torch.manual_seed(0)
    D = models.build_discriminator("dcgan", models.model_kwargs(
        "dcgan", res=16, z_dim=8, width=16)[1])
    opts = engines.EngineOptions(strategy="none", precision="fp32", micro_batch=32, accum=1,
                                 grad_clip=0.0)
    step = train_gan(DatasetGenerator(fake_pool), D, images=True, opts=opts,
                     dist=Dist(0, 1, 0, torch.device("cpu")), lr_g=1e-3, lr_d=5e-3,
                     betas=(0.5, 0.99), augment=Augmentation("ada", kimg=1)).step
    draw = torch.Generator().manual_seed(0)
    ps, r_ts = [], []
    for i in range(1, steps + 1):
        real = real_pool[torch.randint(len(real_pool), (32,), generator=draw)]
        step(real, torch.randn(32, 8, generator=draw), i)
        if i % 50 == 0:
            ps.append(float(step.ada.p))
            r_ts.append(step.take_stats()["r_t"])
    return ps, r_ts


@pytest.mark.slow
def test_p_rises_when_d_memorises_256_images_and_stays_at_0_on_a_large_set():
    """G here makes images of the dataset itself, so D can only tell real from fake by
    remembering the real ones. On 256 real images it does: r_t (the share of real images
    it calls real) climbs above the target and p rises. On 2,048 it cannot in the same
    time: r_t stays low and p at 0. (The real images are the shapes', the fakes 2,048
    others; under a minute on 2 cores.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same sums in the same order on any machine
    try:
        fakes = _shapes(256, 2048)
        small_p, small_r_t = _p_and_r_t_while_d_learns(_shapes(0, 256), fakes, 400)
        large_p, large_r_t = _p_and_r_t_while_d_learns(_shapes(4096, 2048), fakes, 400)
    finally:
        torch.set_num_threads(threads)
    assert max(small_p) > 0.1, (small_p, small_r_t)
    assert max(large_p) == 0.0, (large_p, large_r_t)
    late = slice(len(small_r_t) // 2, None)
    assert np.mean(small_r_t[late]) > np.mean(large_r_t[late]) + 0.2, (small_r_t, large_r_t)
