"""The command line: flags -> validated config -> command.

Every mistake a user can make (an unknown option, a bad number, a missing path) ends
in one line on stderr naming the culprit, and exit status 2: no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import config as C
from .errors import RunError, UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + error; we print one line
        self.exit(2, f"{self.prog}: error: {message}\n")


def _train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a GAN", description="Train a GAN. Flags may "
                       "also come from --config FILE.toml (keys are the flag names); "
                       "flags on the command line win.")
    p.add_argument("--config", metavar="FILE", help="TOML file of flag values")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved configuration as JSON and exit")
    defaults = C.TrainConfig()
    for section, f in C.flag_fields(defaults):
        meta = f.metadata
        kind = C.base_type(f)
        help_text = meta["help"]
        default = getattr(getattr(defaults, section), f.name)
        if default is not None:
            help_text += f" (default: {default})"
        if meta.get("choices"):
            help_text += f" [{'|'.join(meta['choices'])}]"
        if kind == "bool":
            p.add_argument(C.flag_name(f), dest=f.name, default=argparse.SUPPRESS,
                           action=argparse.BooleanOptionalAction, help=help_text)
        else:
            # Values stay strings here; config.convert gives the one-line errors.
            p.add_argument(C.flag_name(f), dest=f.name, default=argparse.SUPPRESS,
                           metavar=meta.get("metavar") or kind.upper(), help=help_text)
    return p


def _sample_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("sample", help="write a grid of generated samples",
                       description="Generate samples from a checkpoint (a run directory, "
                       "a checkpoint directory or a generator.pt).")
    p.add_argument("ckpt", metavar="CKPT")
    p.add_argument("--n", default="64", help="number of samples (default: 64)")
    p.add_argument("--out", default="grid.png", help="output PNG (default: grid.png)")
    p.add_argument("--seed", default="0", help="seed of the latent vectors (default: 0)")
    p.add_argument("--device", default="cpu", help="device (default: cpu)")
    _add_truncation(p)
    p.add_argument("--class", dest="cls", metavar="K", help="conditional runs: every "
                   "sample of class K, 0 to classes - 1 (default: the classes in turn)")
    return p


def _add_truncation(p: argparse.ArgumentParser) -> None:
    p.add_argument("--truncation", default="1", metavar="PSI",
                   help="StyleGAN2's truncation trick: w = w_avg + PSI (w - w_avg), toward "
                   "the generator's tracked mean w; below 1 trades diversity for quality, "
                   "0 gives the mean image, above 1 extrapolates (default: 1, off)")


def truncation_psi(args: argparse.Namespace) -> float:
    return C.float_flag(args.truncation, "--truncation", 0.0)


def _shards_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("shards", help="turn an image folder or zip into tar shards",
                       description="Write the images of SRC (a folder, searched recursively, "
                       "or a zip) as WebDataset tar shards plus manifest.json in OUT_DIR. "
                       "Class subfolders become integer labels. Unreadable files are "
                       "skipped and listed in the manifest.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--res", help="square output resolution (default: keep the size)")
    p.add_argument("--crop", default="center",
                   help="center: crop the centre square; pad: letterbox to a square on "
                   "black; none: keep the image as it is (default: center)")
    p.add_argument("--format", default="jpg", help="jpg|png|webp (default: jpg)")
    p.add_argument("--quality", default="95", help="jpg/webp quality (default: 95)")
    p.add_argument("--shard-size", default="10000", help="images per shard (default: 10000)")
    p.add_argument("--workers", default=str(os.cpu_count() or 1),
                   help="processes decoding and encoding (default: all cores)")
    p.add_argument("--max-images", help="stop after this many images")
    p.add_argument("--labels", default="auto",
                   help="auto: class subfolders become labels; none: no labels")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def shard_options(args: argparse.Namespace):
    from .data.make_shards import ShardOptions

    return ShardOptions(res=None if args.res is None else C.int_flag(args.res, "--res", 1),
                        crop=args.crop, format=args.format,
                        quality=C.int_flag(args.quality, "--quality", 1),
                        shard_size=C.int_flag(args.shard_size, "--shard-size", 1),
                        workers=C.int_flag(args.workers, "--workers", 1),
                        max_images=None if args.max_images is None
                        else C.int_flag(args.max_images, "--max-images", 1),
                        labels=args.labels)


def _eval_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="FID, KID and mode metrics of a checkpoint",
                       description="Evaluate a generator (a run directory, a checkpoint "
                       "directory or a generator.pt) against real data; under torchrun "
                       "every rank generates and reads its share. Prints one JSON line.")
    p.add_argument("ckpt", metavar="CKPT")
    p.add_argument("--data", help="real data, as for train (default: the run's dataset)")
    p.add_argument("--metrics", default="fid,kid",
                   help="comma-separated: fid, kid, modes (embedded datasets) "
                   "(default: fid,kid)")
    p.add_argument("--features", default="inception",
                   help="inception (the FID network; weights from --inception), randconv "
                   "(self-contained random-conv features: FIDs comparable between runs, "
                   "not with papers), or module:function (default: inception)")
    p.add_argument("--inception", help="the FID Inception weights, "
                   "pt_inception-2015-12-05-6726825d.pth (default: $FASTGAN_INCEPTION)")
    p.add_argument("--num-gen", default="50000", help="generated samples (default: 50000)")
    p.add_argument("--num-real", help="real images (default: all; points: 50000 draws)")
    p.add_argument("--batch", default="64", help="batch per rank (default: 64)")
    p.add_argument("--seed", default="0", help="seed of the latents (default: 0)")
    p.add_argument("--generator", default="ema", help="ema (default; the trained G when "
                   "the run had no EMA) or trained")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--workers", default="1", help="loader processes per rank (default: 1)")
    p.add_argument("--cache-dir", help="where real statistics are cached (default: "
                   "$FASTGAN_CACHE or ~/.cache/fastgan)")
    p.add_argument("--json", help="also write the result to this file")
    _add_truncation(p)
    return p


def eval_options(args: argparse.Namespace):
    from .metrics.evaluate import EvalOptions, parse_metrics

    if args.generator not in ("ema", "trained"):
        raise UserError(f"--generator: expected ema or trained, got {args.generator!r}")
    if args.device != "auto" and args.device != "cpu" and not args.device.startswith("cuda"):
        raise UserError(f"--device: must be auto, cpu or cuda[:N], got {args.device!r}")
    return EvalOptions(
        ckpt=args.ckpt, data=args.data, metrics=parse_metrics(args.metrics),
        features=args.features, inception=args.inception,
        num_gen=C.int_flag(args.num_gen, "--num-gen", 2),
        num_real=None if args.num_real is None else C.int_flag(args.num_real, "--num-real", 2),
        batch=C.int_flag(args.batch, "--batch", 1), seed=C.int_flag(args.seed, "--seed", 0),
        device=args.device, workers=C.int_flag(args.workers, "--workers", 0),
        cache_dir=args.cache_dir or C.default_cache_dir(),
        use_ema=args.generator == "ema", json_path=args.json, truncation=truncation_psi(args))


def _report_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="a PNG of a run's curves, health and samples",
                       description="Draw the loss curves, D(x) and D(G(z)), the health "
                       "signals and the latest sample grid of a run directory into one PNG.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", help="output PNG (default: RUN_DIR/report.png)")
    return p


def _bench_parser(sub) -> argparse.ArgumentParser:
    from .bench import data as bench_data
    from .bench import kernels as bench_kernels
    from .bench import modes as bench_modes
    from .bench import step as bench_step

    p = sub.add_parser("bench", help="measure throughput against baselines",
                       description="Throughput benchmarks; each prints a table of ratios "
                       "measured in one run.")
    kinds = p.add_subparsers(dest="bench", metavar="KIND", parser_class=_Parser)
    kinds.required = True
    bench_data.main_args(kinds)
    bench_kernels.main_args(kinds)
    bench_step.main_args(kinds)
    bench_modes.main_args(kinds)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastgan", description="Fast, distributed GAN training.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _train_parser(sub)
    _sample_parser(sub)
    _shards_parser(sub)
    _eval_parser(sub)
    _report_parser(sub)
    _bench_parser(sub)
    return parser


def train_config(args: argparse.Namespace) -> C.TrainConfig:
    cfg = C.TrainConfig()
    explicit: set[str] = set()
    if args.config:
        values = C.load_toml(args.config)
        C.apply(cfg, values, f"--config {args.config}")
        explicit |= {k.replace("-", "_") for k in values}
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config", "dry_run")}
    C.apply(cfg, flags, "command line")
    explicit |= set(flags)
    return C.resolve(cfg, explicit)


def main(argv: list[str] | None = None) -> int:
    # force: each call logs to the sys.stderr of its time (main runs more than once in
    # one process when called from Python)
    logging.basicConfig(level=logging.INFO, format="fastgan: %(message)s", force=True)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            cfg = train_config(args)
            if args.dry_run:
                print(cfg.to_json())
                return 0
            from .train.loop import train  # heavy imports only when training

            train(cfg)
        elif args.command == "sample":
            from .sample_command import write_samples

            cls = None if args.cls is None else C.int_flag(args.cls, "--class")
            path = write_samples(args.ckpt, n=C.int_flag(args.n, "--n", 1), out=args.out,
                                 seed=C.int_flag(args.seed, "--seed", 0), device=args.device,
                                 truncation=truncation_psi(args), cls=cls)
            print(path)
        elif args.command == "shards":
            from .data.make_shards import make_shards, summary_line

            manifest = make_shards(args.src, args.out_dir, shard_options(args),
                                   progress=args.progress)
            print(summary_line(manifest, args.out_dir), file=sys.stderr)
        elif args.command == "eval":
            from .metrics.evaluate import evaluate

            evaluate(eval_options(args))
        elif args.command == "report":
            from .report import report

            print(report(args.run_dir, args.out))
        elif args.command == "bench":
            if args.bench == "modes":
                from .bench import modes as bench_modes

                bench_modes.run(bench_modes.from_args(args))
            elif args.bench == "data":
                from .bench import data as bench_data

                bench_data.run(bench_data.from_args(args))
            elif args.bench == "step":
                from .bench import step as bench_step

                bench_step.run(bench_step.from_args(args))
            else:
                from .bench import kernels as bench_kernels

                bench_kernels.run(args.json, args.dtype)
        return 0
    except (UserError, RunError) as e:
        command = " ".join(filter(None, [args.command, getattr(args, "bench", None)]))
        print(f"fastgan {command}: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UserError) else 1
    except KeyboardInterrupt:
        print("fastgan: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
