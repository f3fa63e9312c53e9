"""``fastgan eval``: FID/KID/modes of a checkpoint, real statistics cached, and the same
numbers from one process or two gloo ranks."""

import json

import pytest

from conftest import run_cli, run_fastgan


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("eval") / "run"
    r = run_fastgan("train", "--steps", "2", "--width", "8", "--batch", "16", "--out",
                    str(out), "--cache-dir", cache_dir, "--no-progress", "--workers", "0")
    assert r.returncode == 0, r.stderr
    return out


def _result(r) -> dict:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


ARGS = ["--features", "randconv", "--num-gen", "80", "--num-real", "200", "--batch", "32",
        "--metrics", "fid,kid,modes", "--workers", "0"]


@pytest.mark.slow  # shapes_run trains
def test_eval_reports_and_caches_real_statistics(shapes_run, cache_dir, tmp_path):
    stats = tmp_path / "stats"
    first = _result(run_cli("eval", str(shapes_run), *ARGS, "--cache-dir", str(stats),
                                "--json", str(tmp_path / "e.json")))
    assert first["data"] == "builtin:shapes" and first["num_real"] == 200
    assert first["features"] == "randconv-v1" and first["fid_randconv"] > 0
    assert first["kid_randconv_std"] >= 0 and first["modes_total"] == 16
    assert json.loads((tmp_path / "e.json").read_text()) == first
    # the embedded data were built under the fixture's cache; the statistics go to stats/
    (cached,) = (stats / "fid-stats").iterdir()
    assert cached.suffix == ".npz"
    again = run_cli("eval", str(shapes_run), *ARGS, "--cache-dir", str(stats))
    assert "real statistics from" in again.stderr
    second = _result(again)
    assert second["fid_randconv"] == first["fid_randconv"]
    assert second["kid_randconv"] == first["kid_randconv"]


@pytest.mark.slow
def test_two_ranks_give_the_numbers_of_one(shapes_run, tmp_path):
    one = _result(run_cli("eval", str(shapes_run), *ARGS, "--cache-dir",
                              str(tmp_path / "a")))
    # 3 blocks of 32 latents (the last of 16) dealt to 2 ranks; real images split too
    two = _result(run_fastgan("eval", str(shapes_run), *ARGS, "--cache-dir",
                              str(tmp_path / "b"), ranks=2))
    assert two["num_real"] == one["num_real"] == 200
    assert two["fid_randconv"] == pytest.approx(one["fid_randconv"], rel=1e-6)
    assert two["kid_randconv"] == pytest.approx(one["kid_randconv"], rel=1e-5)
    for k in ("modes_covered", "recognisable"):
        assert two[k] == one[k]


@pytest.mark.slow
def test_eval_errors_are_one_line(shapes_run, tmp_path, monkeypatch):
    monkeypatch.delenv("FASTGAN_INCEPTION", raising=False)
    r = run_cli("eval", str(shapes_run), "--num-gen", "8", "--cache-dir", str(tmp_path))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "pytorch-fid/releases/download/fid_weights" in r.stderr
    # mode metrics alone need no feature extractor, hence no Inception weights
    modes = _result(run_cli("eval", str(shapes_run), "--metrics", "modes", "--num-gen",
                                "64", "--cache-dir", str(tmp_path)))
    assert modes["modes_total"] == 16 and "fid" not in modes
    for args, culprit in ((["--metrics", "fid,iss"], "--metrics: unknown iss"),
                          (["--num-gen", "1"], "--num-gen"),
                          (["--data", str(tmp_path / "none")], "no such file"),
                          (["--generator", "both"], "--generator")):
        r = run_cli("eval", str(shapes_run), "--features", "randconv", *args)
        assert r.returncode == 2 and culprit in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run_cli("eval", str(tmp_path / "missing"), "--features", "randconv")
    assert r.returncode == 2 and "missing" in r.stderr


# The tests above train a run and evaluate it in processes of their own (slow); these
# call evaluate() and write_samples() in this process on the checkpoint of an untrained ring
# generator, written as training writes one.

def _save(run, G, arch: str, g_kw: dict, step: int = 1, **payload):
    """G's checkpoint at ``run``, as training writes one (generator.pt and state.pt)."""
    from fastgan.train import checkpoint

    payload = {"arch": arch, "kwargs": g_kw, "z_dim": g_kw["z_dim"], "step": step,
               "state_dict": G.state_dict(), **payload}
    checkpoint.save(run, step, {"step": step}, payload, keep=2)
    return run


@pytest.fixture
def ring_checkpoint(tmp_path):
    import torch

    from fastgan import models

    g_kw, _ = models.model_kwargs("mlp", res=None, z_dim=16, width=16)
    torch.manual_seed(0)
    G = models.build_generator("mlp", g_kw)
    return _save(tmp_path / "run", G, "mlp", g_kw, kind="points", dataset="ring")


def test_evaluate_in_process_on_points(ring_checkpoint, tmp_path):
    from fastgan.errors import UserError
    from fastgan.metrics import evaluate

    r = evaluate.evaluate(evaluate.EvalOptions(
        ckpt=str(ring_checkpoint), metrics=("fid", "modes"), num_gen=500, num_real=500,
        device="cpu", workers=0, cache_dir=str(tmp_path / "cache")))
    assert r["data"] == "builtin:ring" and r["features"] == "points" and r["step"] == 1
    assert r["generator"] == "trained" and r["num_real"] == 500
    assert r["fid"] > 0 and r["modes_total"] == 8 and 0 <= r["modes_covered"] <= 8
    assert "kid" not in r
    assert evaluate.parse_metrics("fid, modes,fid") == ("fid", "modes")
    with pytest.raises(UserError, match="--metrics: unknown iss"):
        evaluate.parse_metrics("fid,iss")


def test_sample_in_process_draws_a_scatter(ring_checkpoint, tmp_path):
    from PIL import Image

    from fastgan.errors import UserError
    from fastgan.sample_command import write_samples

    out = write_samples(str(ring_checkpoint), n=16, out=str(tmp_path / "p.png"))
    assert out == tmp_path / "p.png"
    with Image.open(out) as img:
        assert img.width > 0 and img.height > 0
    with pytest.raises(UserError, match="--out: directory"):
        write_samples(str(ring_checkpoint), n=4, out=str(tmp_path / "no" / "p.png"))


# Truncation and --class on a tiny conditional StyleGAN2 (res 16, 3 classes). Untrained,
# its noise strengths are 0: random noise changes nothing, so samples can be compared
# with G's synthesis of chosen ws exactly.

def _stylegan2(c_dim: int = 3):
    import torch

    from fastgan import models

    g_kw, _ = models.model_kwargs("stylegan2", res=16, z_dim=16, width=4, c_dim=c_dim)
    torch.manual_seed(0)
    return models.build_generator("stylegan2", g_kw).eval(), g_kw


@pytest.fixture(scope="module")
def stylegan2_checkpoint(tmp_path_factory):
    """The checkpoint (step 5000, its mean w tracked) and 32 real 16x16 images of 3
    classes for eval."""
    import torch

    from fastgan import sampling
    from shardsets import write_uneven_shards

    tmp = tmp_path_factory.mktemp("stylegan2")
    write_uneven_shards(tmp / "real", [32], res=16)
    G, g_kw = _stylegan2()
    with torch.no_grad():  # what training's running mean tends to
        G.mapping.w_avg.copy_(G.mapping(torch.randn(256, 16), sampling.class_cycle(256, 3),
                                        broadcast=False).mean(0))
    return _save(tmp / "run", G, "stylegan2", g_kw, step=5000, kind="images",
                 dataset=str(tmp / "real"))


def _reference(ckpt, n: int, seed: int = 0):
    """The checkpoint's G, and the z and the untruncated w of sample's first n samples."""
    import torch

    from fastgan import models, sampling
    from fastgan.train.checkpoint import load_generator

    payload = load_generator(ckpt)
    G = models.build_generator("stylegan2", payload["kwargs"]).eval()
    G.load_state_dict(payload["state_dict"])
    z = torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        w = G.mapping(z, sampling.class_cycle(n, 3), broadcast=False)
    return G, z, w


def test_truncation_lerps_w_toward_the_tracked_mean(stylegan2_checkpoint):
    import torch

    from fastgan.sample_command import sample

    G, z, w = _reference(stylegan2_checkpoint, 6)
    w_avg = G.mapping.w_avg
    assert w_avg.any() and not torch.allclose(w, w_avg.expand_as(w), atol=1e-3)
    with torch.no_grad():
        def synth(ws):
            return G.synthesis(ws, noise_mode="none")

        mean_image = synth(w_avg.expand(1, -1))
        full = synth(w)
        half = synth(w_avg.lerp(w, 0.5))
    _, at0 = sample(str(stylegan2_checkpoint), n=6, truncation=0.0)
    torch.testing.assert_close(at0, mean_image.expand_as(at0))  # every sample: the mean
    _, at1 = sample(str(stylegan2_checkpoint), n=6, truncation=1.0)
    torch.testing.assert_close(at1, full)  # untruncated
    _, at_half = sample(str(stylegan2_checkpoint), n=6, truncation=0.5)
    torch.testing.assert_close(at_half, half)
    # halfway from the mean image: nearer to it than the untruncated samples are
    dist_half = (at_half - mean_image).flatten(1).norm(dim=1)
    dist_full = (full - mean_image).flatten(1).norm(dim=1)
    assert (dist_half < dist_full).all() and (dist_half > 0).all()


def test_class_k_is_g_given_one_hot_k(stylegan2_checkpoint, tmp_path):
    import torch
    import torch.nn.functional as F

    from fastgan.sample_command import sample

    G, z, _ = _reference(stylegan2_checkpoint, 6)
    with torch.no_grad():
        want = G(z, F.one_hot(torch.full((6,), 2), 3), noise_mode="none")
    _, got = sample(str(stylegan2_checkpoint), n=6, cls=2)
    torch.testing.assert_close(got, want)
    _, cycle = sample(str(stylegan2_checkpoint), n=6)  # classes 0, 1, 2, 0, 1, 2
    same = [torch.equal(a, b) for a, b in zip(got, cycle)]
    assert same == [False, False, True, False, False, True]
    r = run_cli("sample", stylegan2_checkpoint, "--n", "4", "--class", "1",
                "--truncation", "0.7", "--out", tmp_path / "g.png")
    assert r.returncode == 0 and (tmp_path / "g.png").exists(), r.stderr


def test_sample_truncation_and_class_errors_are_one_line(stylegan2_checkpoint,
                                                         ring_checkpoint, tmp_path):
    out = ["--out", tmp_path / "g.png"]
    cases = [(stylegan2_checkpoint, ["--class", "3"], "--class: the generator has 3 classes"),
             (stylegan2_checkpoint, ["--class", "-1"], "--class: the generator has 3 classes"),
             (stylegan2_checkpoint, ["--class", "two"], "--class: expected an integer"),
             (stylegan2_checkpoint, ["--truncation", "nan"], "--truncation: expected a finite"),
             (stylegan2_checkpoint, ["--truncation", "inf"], "--truncation: expected a finite"),
             (stylegan2_checkpoint, ["--truncation", "-0.5"], "--truncation: must be >= 0"),
             (ring_checkpoint, ["--truncation", "0.5"],
              "--truncation 0.5: the mlp generator has no mapping"),
             (ring_checkpoint, ["--class", "0"], "--class 0: the generator is unconditional")]
    G, g_kw = _stylegan2(c_dim=0)  # its mean w was never updated: all zeros
    untrained = _save(tmp_path / "untrained", G, "stylegan2", g_kw, kind="images",
                      dataset="shapes")
    cases.append((untrained, ["--truncation", "0.5"], "--truncation 0.5: the generator's "
                  "tracked mean w is all zeros"))
    for ckpt, args, message in cases:
        r = run_cli("sample", ckpt, *args, *out)
        assert r.returncode == 2, (args, r.stderr)
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith(f"fastgan sample: error: {message}"), (args, line)
    assert not (tmp_path / "g.png").exists()
    # a mean w from a few steps still leans toward its zero start: a warning, no error
    G.mapping.w_avg.fill_(0.1)  # a buffer: no gradient
    young = _save(tmp_path / "young", G, "stylegan2", g_kw, step=100, kind="images",
                  dataset="shapes")
    r = run_cli("sample", young, "--n", "2", "--truncation", "0.5", *out)
    assert r.returncode == 0 and "from step 100" in r.stderr and "61%" in r.stderr, r.stderr


def test_eval_truncation_is_applied_and_reported(stylegan2_checkpoint, ring_checkpoint,
                                                  tmp_path):
    # KID: FID's two 512 x 512 eigendecompositions would cost seconds on a busy CPU
    args = ["--features", "randconv", "--metrics", "kid", "--num-gen", "24", "--batch", "8",
            "--workers", "0", "--device", "cpu", "--cache-dir", tmp_path]
    r = run_cli("eval", stylegan2_checkpoint, *args, "--truncation", "0.5",
                "--json", tmp_path / "e.json")
    half = _result(r)
    assert half["truncation"] == 0.5 and half["num_real"] == 32
    assert json.loads((tmp_path / "e.json").read_text()) == half
    full = _result(run_cli("eval", stylegan2_checkpoint, *args))
    assert full["truncation"] == 1.0
    assert full["kid_randconv"] != half["kid_randconv"]  # other samples
    r = run_cli("eval", ring_checkpoint, "--truncation", "0.5", "--metrics", "fid")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--truncation 0.5: the mlp generator has no mapping network" in r.stderr
