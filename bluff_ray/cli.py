"""``bluff``: the command line (run, demo, submit, serve, publish).

Every RunConfig field is an option of ``bluff run``, generated from its declaration
(``bluff_ray.run.options.add_arguments``: type, bounds, description as help), so the CLI can never
lag behind the config file format; options override ``--set KEY=VALUE``, which overrides the
``--config`` file, which overrides the defaults. ``bluff demo`` shares the options it has.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bluff_ray import __version__

log = logging.getLogger("bluff_ray")

# The demo: every ordered digit pair at the model's 10 default strengths, on local Ray.
DEMO_OUT = "./bluff-results"
# 32 of each digit's ~54 test images keep the paper's attack (50 PGD steps) while the 90 pairs
# finish in about 3 minutes on 2 CPU cores (BENCHMARKS.md), well under the 10-minute goal.
DEMO_IMAGES_PER_CLASS = 32
# 3 targets per work unit: 30 units, so the progress bar moves every ~20 s on 2 cores.
DEMO_TARGET_CHUNK = 3


def add_run_options(p: argparse.ArgumentParser) -> None:
    """``--config``, ``--overwrite``, one option per RunConfig field (``--attack-steps`` for
    ``attack.steps``) and ``--set KEY=VALUE``."""
    from bluff_ray.run import options

    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML (.toml) or YAML (.yaml/.yml) run configuration; command-line options override it",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="if the output root holds results of a different configuration, delete them first "
        "(without it such a run is refused)",
    )
    p.add_argument(
        "--verify",
        choices=("size", "checksum", "none"),
        default="size",
        help="how a resume checks finished units' files against their markers: 'size' (default: one listing "
        "per table folder), 'checksum' (every file read and its SHA-256 compared) or 'none'; units that do not "
        "match are recomputed and listed",
    )
    options.add_arguments(p)
    options.add_set_argument(p)


def config_from_args(args: argparse.Namespace, base: dict | None = None):
    """Defaults <- ``base`` <- config file <- --set <- command-line options."""
    from bluff_ray.run.options import from_args

    return from_args(args, base)


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("botocore", "s3fs", "aiobotocore", "fsspec", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _run_and_report(cfg, overwrite: bool, ray_address: str | None, verify: str = "size") -> int:
    from bluff_ray.results.store import StorageError
    from bluff_ray.run.config import ConfigError
    from bluff_ray.run.driver import RunError, run

    try:
        summary = run(cfg, overwrite=overwrite, ray_address=ray_address, verify=None if verify == "none" else verify)
    except (ConfigError, StorageError, RunError, FileNotFoundError) as e:
        print(f"bluff: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bluff: interrupted; finished units are kept - rerun the same command to resume", file=sys.stderr)
        return 130
    print(summary.report())
    return 1 if summary.failed or summary.stopped else 0


def cmd_run(args: argparse.Namespace) -> int:
    from bluff_ray.run.config import ConfigError

    try:
        cfg = config_from_args(args)
    except ConfigError as e:
        print(f"bluff: error: {e}", file=sys.stderr)
        return 2
    return _run_and_report(cfg, args.overwrite, args.ray_address, args.verify)


#: The demo run: digits, all 90 ordered pairs, default strengths, assets; batch sizes for a CPU.
DEMO = {
    "model": "digits",
    "data": "digits",
    "out": DEMO_OUT,
    "attack_batch_size": 2048,
    "benign_batch_size": 512,
    "images_per_class": DEMO_IMAGES_PER_CLASS,
    "target_chunk": DEMO_TARGET_CHUNK,
}
#: The RunConfig fields ``bluff demo`` has as options (``--workers`` for num_workers).
DEMO_OPTIONS = ("out", "classes", "images_per_class", "num_workers")


def demo_config(
    out: str = DEMO_OUT,
    workers: int | None = None,
    classes: list[str] | None = None,
    images_per_class: int = DEMO_IMAGES_PER_CLASS,
):
    from bluff_ray.run.config import from_dict

    return from_dict(
        {**DEMO, "out": out, "num_workers": workers, "classes": classes, "images_per_class": images_per_class}
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from bluff_ray.run.config import ConfigError

    try:
        cfg = config_from_args(args, base=DEMO)
    except ConfigError as e:
        print(f"bluff: error: {e}", file=sys.stderr)
        return 2
    rc = _run_and_report(cfg, args.overwrite, None)
    if rc != 0 or args.no_serve:
        return rc
    from bluff_ray.web.serve import serve

    print(f"serving {cfg.out} on http://{args.host}:{args.port}/  (Ctrl-C to stop)")
    serve(cfg.out, host=args.host, port=args.port, open_browser=args.open)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bluff",
        description="Bluff at scale: adversarial activation pathways for every class pair, computed on Ray "
        "into partitioned Parquet (local folder or S3), browsed in a static viewer.",
    )
    parser.add_argument("--version", action="version", version=f"bluff_ray {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "run",
        help="compute pairs into a results root (resumable)",
        description="Compute every requested class pair on Ray and write the results root "
        "(docs/FORMAT.md). Finished work units are skipped on a rerun with the same configuration; "
        "a different configuration into the same root is refused unless --overwrite.",
    )
    add_run_options(p)
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="connect to this Ray cluster (default: $RAY_ADDRESS, else start a local Ray instance)",
    )
    p.set_defaults(func=cmd_run)

    d = sub.add_parser(
        "demo",
        help="digits demo: all 90 digit pairs on local Ray, then serve the viewer",
        description="Train (or load the cached) digits model, compute all 90 ordered digit pairs at "
        "10 strengths on a local Ray instance, write them to --out and serve the viewer.",
    )
    from bluff_ray.run.options import add_arguments

    # 32 of about 54 test images per digit keep the demo under 10 minutes on 2 cores; 60 takes them all.
    add_arguments(
        d,
        only=DEMO_OPTIONS,
        defaults=DEMO,
        flags={"num_workers": ("--workers", "--num-workers")},
        title="run configuration (the bluff run options of the same name)",
    )
    d.add_argument("--no-serve", action="store_true", help="stop after computing; do not start the viewer server")
    d.add_argument("--host", default="127.0.0.1", help="viewer server address (default: 127.0.0.1)")
    d.add_argument("--port", type=int, default=8000, help="viewer server port (default: 8000)")
    d.add_argument("--open", action="store_true", help="open the viewer in a web browser")
    d.add_argument(
        "--overwrite", action="store_true", help="replace results of a different configuration already in --out"
    )
    d.set_defaults(func=cmd_demo)

    from bluff_ray.run import submit
    from bluff_ray.web import publish, serve

    submit.register(sub)
    serve.register(sub)
    publish.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
