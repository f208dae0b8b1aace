"""The ``bluff run`` options, generated from RunConfig's declarations.

One option per field (``--attack-steps`` for ``attack.steps``, ``--storage-option KEY=VALUE`` for
the storage options), with the field's description, bounds and default as its help; a field added
to RunConfig or to an engine config is an option without more code. Values arrive as text and are
typed and validated by ``config.load`` like a config file's, so an error names the dotted key.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bluff_ray.run.config import RunConfig, field_table, load, parse_assignment, parse_options, sections


def _number(x: Any) -> str:
    return f"2^{x.bit_length() - 1}" if isinstance(x, int) and x >= 2**20 and x & (x - 1) == 0 else f"{x:,}"


def _range(meta: Mapping[str, Any]) -> str:
    """Bounds for the help: ``1..10,000``, ``> 0, <= 10``, ``>= 0, < 2^63``."""
    if "le" in meta and "ge" in meta:
        return f"{_number(meta['ge'])}..{_number(meta['le'])}"
    lo = f">= {_number(meta['ge'])}" if "ge" in meta else f"> {_number(meta['gt'])}" if "gt" in meta else ""
    hi = f"<= {_number(meta['le'])}" if "le" in meta else f"< {_number(meta['lt'])}" if "lt" in meta else ""
    return ", ".join(x for x in (lo, hi) if x)


def _help(f: dataclasses.Field, default: Any, show_default: bool = True, overridden: bool = False) -> str:
    text = f.metadata.get("description", f.name)
    if overridden:  # another default here (bluff demo): drop the field's own "(default: ...)"
        text = re.sub(r" \(default: [^)]*\)$", "", text)
    extra = [_range(f.metadata)] if _range(f.metadata) else []
    if show_default and "default" not in text:
        shown = (
            "unset"
            if default is None
            else ",".join(map(str, default))
            if isinstance(default, (list, tuple))
            else str(default)
        )
        extra.append(f"default: {shown}")
    return f"{text} ({'; '.join(extra)})" if extra else text


def _flag(key: str) -> str:
    return "--" + key.replace(".", "-").replace("_", "-")


def _add(
    group: argparse._ArgumentGroup,
    key: str,
    f: dataclasses.Field,
    typ: Any,
    default: Any,
    flags: Sequence[str] | None = None,
    overridden: bool = False,
) -> None:
    names = list(flags or [_flag(key)])
    if typing.get_origin(typ) is dict:  # storage_options: --storage-option KEY=VALUE, repeatable
        group.add_argument(
            _flag(key).removesuffix("s"),
            dest=key,
            metavar="KEY=VALUE",
            action="append",
            default=argparse.SUPPRESS,
            help=_help(f, None, show_default=False),
        )
    elif typ is bool:
        group.add_argument(
            *names,
            dest=key,
            action=argparse.BooleanOptionalAction,
            default=argparse.SUPPRESS,
            help=_help(f, default, overridden=overridden),
        )
    else:
        metavar = "LIST" if typing.get_origin(typ) is list else getattr(typ, "__name__", "VALUE").upper()
        group.add_argument(
            *names,
            dest=key,
            metavar=metavar.replace("STR", "TEXT"),
            default=argparse.SUPPRESS,
            help=_help(f, default, overridden=overridden),
        )


def add_arguments(
    parser: argparse.ArgumentParser,
    only: Iterable[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    flags: Mapping[str, Sequence[str]] | None = None,
    title: str = "run configuration (also settable in the config file)",
) -> None:
    """One option per RunConfig field (``--attack-steps`` for ``attack.steps``), help from its description.

    ``only`` limits them to some dotted keys (``bluff demo``), ``defaults`` shows other defaults in the
    help, ``flags`` renames options. Values arrive as text under the dotted key: :func:`from_args`."""
    defaults = dict(defaults or {})
    flags = dict(flags or {})
    only = None if only is None else set(only)
    base = RunConfig()
    nested = sections()
    group = parser.add_argument_group(title)
    for name, (f, typ) in field_table().items():
        if name in nested or (only is not None and name not in only):
            continue
        _add(group, name, f, typ, defaults.get(name, getattr(base, name)), flags.get(name), name in defaults)
    for section, cls in nested.items():
        keys = [(f"{section}.{n}", f, typ) for n, (f, typ) in field_table(cls).items()]
        keys = [k for k in keys if only is None or k[0] in only]
        if not keys:
            continue
        group = parser.add_argument_group(f"[{section}] options")
        for key, f, typ in keys:
            _add(
                group,
                key,
                f,
                typ,
                defaults.get(key, getattr(getattr(base, section), key.split(".")[1])),
                flags.get(key),
                key in defaults,
            )


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="set_values",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="set any config key, dotted for the tables (e.g. attack.steps=20); repeatable; the "
        "named options above take precedence",
    )


def from_args(args: argparse.Namespace, base: Mapping[str, Any] | None = None) -> RunConfig:
    """Defaults <- ``base`` <- ``--config`` file <- ``--set`` <- the generated options in ``args``."""
    flat: dict[str, Any] = {}
    for item in getattr(args, "set_values", None) or []:
        key, value = parse_assignment(item)
        flat[key] = value
    known = set(field_table()) | {f"{s}.{n}" for s, c in sections().items() for n in field_table(c)}
    for key, value in vars(args).items():
        if key in known:
            flat[key] = parse_options(value) if key == "storage_options" else value
    return load(getattr(args, "config", None), flat, base=base)
