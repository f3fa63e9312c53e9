import json

import pytest

from conftest import run_cli


def test_dry_run_prints_resolved_config(tmp_path):
    r = run_cli("train", "--dry-run", "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["data"]["data"] == "builtin:shapes"
    assert cfg["model"]["arch"] == "dcgan" and cfg["data"]["res"] == 32
    assert cfg["run"]["precision"] == "auto"
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
    ring = json.loads(run_cli("train", "--dry-run", "--data", "builtin:ring").stdout)
    assert ring["model"]["arch"] == "mlp" and ring["model"]["latent_modes"] == 0
    grid = json.loads(run_cli("train", "--dry-run", "--data", "builtin:grid").stdout)
    assert grid["model"]["latent_modes"] == 100 and grid["optim"]["r1_gamma"] == 0.01
    assert cfg["model"]["latent_modes"] == 0


def test_toml_config_with_flag_override(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('batch = 32\n"lr-g" = 1e-4\nsample_every = 7\narch = "dcgan"\n')
    r = run_cli("train", "--dry-run", "--config", str(toml), "--batch", "16")
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["loop"]["batch"] == 16  # the command line wins
    assert cfg["optim"]["lr_g"] == 1e-4 and cfg["loop"]["sample_every"] == 7


@pytest.mark.parametrize("args,culprit", [
    (["--batch", "abc"], "--batch"),
    (["--batch", "0"], "--batch"),
    (["--kimg", "-1"], "--kimg"),
    (["--lr-g", "5"], "--lr-g"),
    (["--res", "33"], "--res"),
    (["--arch", "resnet"], "--arch"),
    (["--arch", "mlp"], "--arch"),
    (["--data", "builtin:ring", "--arch", "dcgan"], "--arch"),
    (["--latent-modes", "10"], "--latent-modes"),  # shapes: dcgan has no mixture latent
    (["--data", "builtin:grid", "--latent-modes", "-1"], "--latent-modes"),
    (["--data", "builtin:nothing"], "builtin:nothing"),
    (["--data", "/no/such/dir"], "/no/such/dir"),
    (["--precision", "fp8"], "--precision"),
    (["--workers", "-2"], "--workers"),
    (["--config", "/no/such.toml"], "/no/such.toml"),
    (["--bogus", "1"], "--bogus"),
])
def test_bad_input_is_one_line_exit_2(args, culprit):
    r = run_cli("train", "--dry-run", *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert culprit in lines[0] and "Traceback" not in r.stderr


def test_bad_toml_key_and_value(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("colour = 3\n")
    r = run_cli("train", "--dry-run", "--config", str(toml))
    assert r.returncode == 2 and "colour" in r.stderr
    toml.write_text('batch = "many"\n')
    r = run_cli("train", "--dry-run", "--config", str(toml))
    assert r.returncode == 2 and "--batch" in r.stderr and len(r.stderr.splitlines()) == 1


def test_sample_errors(tmp_path):
    r = run_cli("sample", str(tmp_path / "nope"))
    assert r.returncode == 2 and "nope" in r.stderr and len(r.stderr.splitlines()) == 1
    r = run_cli("sample", str(tmp_path), "--n", "x")
    assert r.returncode == 2 and "--n" in r.stderr


def test_unwritable_out_and_cache_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = run_cli("train", "--steps", "1", "--no-progress", "--out", str(blocker / "run"))
    assert r.returncode == 2 and "--out" in r.stderr and len(r.stderr.splitlines()) == 1
    r = run_cli("train", "--steps", "1", "--no-progress", "--out", str(tmp_path / "run"),
                    "--cache-dir", str(blocker / "cache"))
    assert r.returncode == 2 and "--cache-dir" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # a failed start leaves no half-made run


def test_stylegan2_recipe_beats_the_dataset_preset(tmp_path):
    """--arch stylegan2 brings StyleGAN2's optimiser, lazy R1 and EMA; explicit flags win."""
    r = run_cli("train", "--dry-run", "--arch", "stylegan2", "--r1-interval", "8",
                    cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    o = cfg["optim"]
    assert (o["lr_g"], o["lr_d"], o["beta1"], o["beta2"]) == (0.0025, 0.0025, 0.0, 0.99)
    assert o["r1_interval"] == 8 and o["ema_kimg"] == 10.0
    assert o["r1_gamma"] == 1.0  # tuned for the shapes (config.py says why)
    assert (o["pl_weight"], o["pl_interval"], o["style_mixing"]) == (2.0, 4, 0.9)
    assert cfg["model"]["z_dim"] == 512
    r = run_cli("train", "--dry-run", cwd=tmp_path)  # DCGAN: no EMA, no path length
    o = json.loads(r.stdout)["optim"]
    assert o["ema_kimg"] == o["pl_weight"] == o["style_mixing"] == 0.0
    from shardsets import write_uneven_shards

    write_uneven_shards(tmp_path / "s", [4])
    r = run_cli("train", "--dry-run", "--arch", "stylegan2", "--data", str(tmp_path / "s"),
                    "--res", "64", cwd=tmp_path)  # elsewhere, StyleGAN2-ADA's heuristic
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["optim"]["r1_gamma"] == pytest.approx(0.0002 * 64**2 / 64)


@pytest.mark.parametrize("flags, message", [
    (["--pl-weight", "2"], "--pl-weight: needs --arch stylegan2"),
    (["--style-mixing", "0.5"], "--style-mixing: needs --arch stylegan2"),
    (["--arch", "stylegan2", "--pl-weight", "-1"], "--pl-weight: must be >= 0"),
    (["--arch", "stylegan2", "--pl-interval", "0"], "--pl-interval: must be >= 1"),
    (["--arch", "stylegan2", "--style-mixing", "1.5"], "--style-mixing: must be in [0, 1]"),
], ids=["pl-dcgan", "mixing-dcgan", "pl-negative", "pl-interval-0", "mixing-above-1"])
def test_path_length_and_style_mixing_flags_are_checked(tmp_path, flags, message):
    r = run_cli("train", "--dry-run", *flags, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.splitlines()) == 1
    # off (0) is fine with any architecture
    r = run_cli("train", "--dry-run", "--pl-weight", "0", "--style-mixing", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_r3gan_config_file(tmp_path):
    """configs/r3gan.toml: the relativistic loss with R1 and R2 at one weight."""
    from conftest import REPO

    r = run_cli("train", "--dry-run", "--config", f"{REPO}/configs/r3gan.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    o = json.loads(r.stdout)["optim"]
    assert o["loss"] == "rpgan" and o["r1_gamma"] == o["r2_gamma"] > 0
    assert (o["beta1"], o["beta2"]) == (0.0, 0.99)
    r = run_cli("train", "--dry-run", "--loss", "wgan", cwd=tmp_path)
    assert r.returncode == 2 and "--loss" in r.stderr and len(r.stderr.splitlines()) == 1
    r = run_cli("train", "--dry-run", "--r2-gamma", "-1", cwd=tmp_path)
    assert r.returncode == 2 and "--r2-gamma" in r.stderr


def test_ada_and_subset_options(tmp_path):
    from shardsets import write_uneven_shards

    write_uneven_shards(tmp_path / "s", [4])
    r = run_cli("train", "--dry-run", "--augment", "ada", "--subset", "512", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    o = cfg["optim"]
    assert (o["augment"], o["augment_p"], o["ada_target"], o["ada_interval"],
            o["ada_kimg"]) == ("ada", None, 0.6, 4, 500.0)
    assert cfg["data"]["subset"] == 512
    for args, flag in ((["--augment-p", "0.5"], "--augment-p"),
                       (["--augment", "ada", "--augment-p", "1.5"], "--augment-p"),
                       (["--augment", "ada", "--ada-target", "1"], "--ada-target"),
                       (["--augment", "ada", "--ada-interval", "0"], "--ada-interval"),
                       (["--augment", "ada", "--ada-kimg", "0"], "--ada-kimg"),
                       (["--augment", "ada", "--data", "builtin:ring"], "--augment"),
                       (["--subset", "0"], "--subset"),
                       (["--subset", "64", "--data", "builtin:ring"], "--subset"),
                       (["--subset", "64", "--data", str(tmp_path / "s")], "--subset")):
        r = run_cli("train", "--dry-run", *args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith(f"fastgan train: error: {flag}:"), (args, r.stderr)
        assert len(r.stderr.splitlines()) == 1
