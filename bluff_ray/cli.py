"""``bluff``: the command line (run, demo, submit, serve, publish).

Every RunConfig field is an option of ``bluff run`` (generated from the dataclasses, so the CLI
can never lag behind the config file format); options override the ``--config`` file, which
overrides the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Any, Sequence

from bluff_ray import __version__

log = logging.getLogger("bluff_ray")

# The demo: every ordered digit pair at the model's 10 default strengths, on local Ray.
DEMO_OUT = "./bluff-results"
# 32 of each digit's ~54 test images keep the paper's attack (50 PGD steps) while the 90 pairs
# finish in about 3 minutes on 2 CPU cores (BENCHMARKS.md), well under the 10-minute goal.
DEMO_IMAGES_PER_CLASS = 32
# 3 targets per work unit: 30 units, so the progress bar moves every ~20 s on 2 cores.
DEMO_TARGET_CHUNK = 3


def _field_type(annotation: Any, default: Any) -> type:
    text = str(annotation)
    if isinstance(default, bool) or text.startswith("bool"):
        return bool
    for name, typ in (("int", int), ("float", float)):
        if text.split(" ")[0] == name or text.startswith(name + " |"):
            return typ
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        return type(default)
    return str


def _default_text(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _parse_kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    low = value.lower()
    if low in ("true", "false"):
        return key, low == "true"
    try:
        return key, int(value)
    except ValueError:
        return key, value


def add_run_options(p: argparse.ArgumentParser) -> None:
    """One option per RunConfig field (``--attack-steps`` for ``attack.steps``)."""
    from bluff_ray.run.config import FIELD_HELP, NESTED, RunConfig, nested_fields

    defaults = RunConfig.__new__(RunConfig)  # field defaults without validation side effects
    for f in dataclasses.fields(RunConfig):
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        object.__setattr__(defaults, f.name, value)
    p.add_argument("--config", metavar="FILE", help="TOML (.toml) or YAML (.yaml/.yml) run configuration; "
                   "command-line options override it")
    p.add_argument("--overwrite", action="store_true",
                   help="if the output root holds results of a different configuration, delete them first "
                   "(without it such a run is refused)")
    g = p.add_argument_group("run configuration (also settable in the config file)")
    for f in dataclasses.fields(RunConfig):
        if f.name in NESTED:
            continue
        value = getattr(defaults, f.name)
        helptext = FIELD_HELP.get(f.name, f.name)
        if f.name == "storage_options":
            g.add_argument("--storage-option", dest="storage_options", metavar="KEY=VALUE", action="append",
                           type=_parse_kv, default=argparse.SUPPRESS, help=helptext)
            continue
        typ = _field_type(f.type, value)
        flag = "--" + f.name.replace("_", "-")
        if typ is bool:
            g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=f"{helptext} (default: {value})")
        elif f.name in ("classes", "pairs", "strengths", "originals"):
            g.add_argument(flag, dest=f.name, metavar="LIST", default=argparse.SUPPRESS,
                           help=f"{helptext}")
        else:
            g.add_argument(flag, dest=f.name, type=typ, metavar=typ.__name__.upper(), default=argparse.SUPPRESS,
                           help=helptext if "default" in helptext else f"{helptext} (default: {_default_text(value)})")
    for section in NESTED:
        sg = p.add_argument_group(f"[{section}] options")
        base = getattr(defaults, section)
        for f in nested_fields(section):
            value = getattr(base, f.name)
            key = f"{section}.{f.name}"
            helptext = FIELD_HELP.get(key, f"{section} setting {f.name}")
            typ = _field_type(f.type, value)
            flag = f"--{section}-{f.name}".replace("_", "-")
            if typ is bool:
                sg.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=f"{helptext} (default: {value})")
            else:
                sg.add_argument(flag, dest=key, type=typ, metavar=typ.__name__.upper(), default=argparse.SUPPRESS,
                                help=f"{helptext} (default: {_default_text(value)})")


def config_from_args(args: argparse.Namespace):
    """Defaults <- config file <- command-line options."""
    from bluff_ray.run.config import load

    skip = {"config", "overwrite", "command", "func", "ray_address", "verbose"}
    overrides = {k: v for k, v in vars(args).items() if k not in skip}
    if "storage_options" in overrides:
        overrides["storage_options"] = dict(overrides["storage_options"])
    return load(args.config, overrides)


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("botocore", "s3fs", "aiobotocore", "fsspec", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _run_and_report(cfg, overwrite: bool, ray_address: str | None) -> int:
    from bluff_ray.run.config import ConfigError
    from bluff_ray.run.pipeline import RunError, run
    from bluff_ray.results.store import StorageError

    try:
        summary = run(cfg, overwrite=overwrite, ray_address=ray_address)
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
    return _run_and_report(cfg, args.overwrite, args.ray_address)


def demo_config(out: str, workers: int | None = None, classes: list[str] | None = None,
                images_per_class: int = DEMO_IMAGES_PER_CLASS):
    """The demo run: digits, all 90 ordered pairs, default strengths, assets; batch sizes for a CPU."""
    from bluff_ray.run.config import RunConfig

    return RunConfig(model="digits", data="digits", out=out, num_workers=workers, attack_batch_size=2048,
                     benign_batch_size=512, classes=classes, images_per_class=images_per_class,
                     target_chunk=DEMO_TARGET_CHUNK)


def cmd_demo(args: argparse.Namespace) -> int:
    from bluff_ray.run.config import ConfigError

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    try:
        cfg = demo_config(args.out, args.workers, classes, args.images_per_class)
    except ConfigError as e:
        print(f"bluff: error: {e}", file=sys.stderr)
        return 2
    rc = _run_and_report(cfg, args.overwrite, None)
    if rc != 0 or args.no_serve:
        return rc
    from bluff_ray.web.serve import serve

    print(f"serving {args.out} on http://{args.host}:{args.port}/  (Ctrl-C to stop)")
    serve(args.out, host=args.host, port=args.port, open_browser=args.open)
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

    p = sub.add_parser("run", help="compute pairs into a results root (resumable)",
                       description="Compute every requested class pair on Ray and write the results root "
                       "(docs/FORMAT.md). Finished work units are skipped on a rerun with the same configuration; "
                       "a different configuration into the same root is refused unless --overwrite.")
    add_run_options(p)
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="connect to this Ray cluster (default: $RAY_ADDRESS, else start a local Ray instance)")
    p.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="digits demo: all 90 digit pairs on local Ray, then serve the viewer",
                       description="Train (or load the cached) digits model, compute all 90 ordered digit pairs at "
                       "10 strengths on a local Ray instance, write them to --out and serve the viewer.")
    d.add_argument("--out", default=DEMO_OUT, help=f"results root (default: {DEMO_OUT})")
    d.add_argument("--workers", type=int, default=None, help="Ray actors (default: one per CPU)")
    d.add_argument("--classes", default=None, metavar="LIST",
                   help="only these digits, e.g. 0,1,2 (default: all 10, i.e. 90 pairs); quicker on a slow machine")
    d.add_argument("--images-per-class", type=int, default=DEMO_IMAGES_PER_CLASS, metavar="N",
                   help=f"use N test images per digit (default: {DEMO_IMAGES_PER_CLASS} of about 54, so the demo "
                   "stays under 10 minutes on 2 cores; 60 or more takes them all)")
    d.add_argument("--no-serve", action="store_true", help="stop after computing; do not start the viewer server")
    d.add_argument("--host", default="127.0.0.1", help="viewer server address (default: 127.0.0.1)")
    d.add_argument("--port", type=int, default=8000, help="viewer server port (default: 8000)")
    d.add_argument("--open", action="store_true", help="open the viewer in a web browser")
    d.add_argument("--overwrite", action="store_true",
                   help="replace results of a different configuration already in --out")
    d.set_defaults(func=cmd_demo)

    from bluff_ray.web import publish
    from bluff_ray.web import serve
    from bluff_ray.run import submit

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
