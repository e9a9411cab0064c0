"""What every command's config shares: the field helpers (:func:`default`, :func:`help_text`,
:func:`describe`, :func:`build`), the checks and units several configs use (seeds, memory sizes,
lists of names), and how messages name a parameter (:func:`arg`, :func:`cli_names`,
:func:`command_flags`)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import operator
from collections.abc import Iterator
from dataclasses import field
from typing import Any

from ..errors import FtdynError

#: Seeds must fit numpy's legacy seeding (``np.random.seed``), the narrowest RNG ftdyn seeds.
SEED_LIMIT = 2**32


def check_seed(seed, param: str = "seed") -> int:
    """``seed`` as an int in ``[0, 2**32)``, or a one-line :class:`FtdynError` naming ``param``.

    Checked once up front: torch, numpy and python RNGs each fail differently (and
    deep inside a run) on seeds they cannot take.
    """
    try:
        value = operator.index(seed)  # ints and numpy integers, not 1.5 or "3"
    except TypeError:
        raise FtdynError(
            f"{arg(param)}: {seed!r} is not a whole number; give one from 0 to {SEED_LIMIT - 1}."
        ) from None
    if not 0 <= value < SEED_LIMIT:
        raise FtdynError(
            f"{arg(param)}: {value} is out of range; give a whole number from 0 to"
            f" {SEED_LIMIT - 1}."
        )
    return value


def _option(default: Any, help: str, *, flag: str | None = None, identity: bool = False) -> Any:
    """A config field: ``default``, its ``help`` text, its CLI ``flag`` (default: ``--field-name``)
    and whether it is part of the run's ``identity`` (a resumed run must repeat it)."""
    return field(default=default, metadata={"help": help, "flag": flag, "identity": identity})


def flag_of(config_type: type, name: str) -> str:
    """The command-line flag of field ``name`` (``num_workers`` -> ``--workers``)."""
    meta = _field(config_type, name).metadata
    return meta.get("flag") or "--" + name.replace("_", "-")


def default(config_type: type, name: str) -> Any:
    """The default value of field ``name`` of ``config_type``."""
    return _field(config_type, name).default


def help_text(config_type: type, name: str) -> str:
    """The help text of field ``name`` of ``config_type`` (the CLI option's help)."""
    return _field(config_type, name).metadata["help"]


def describe(config_type: type) -> str:
    """One line per field: name, default and help (for docstrings and ``help()``)."""
    lines = []
    for f in dataclasses.fields(config_type):
        if f.metadata.get("internal"):
            continue
        shown = "required" if f.default is dataclasses.MISSING else f"default {f.default!r}"
        lines.append(f"{f.name} ({shown}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


def build(config_type: type, config: Any = None, **options: Any) -> Any:
    """``config`` with ``options`` applied, or a new ``config_type`` from ``options`` (how the
    Python API takes either keyword arguments or a config)."""
    if config is None:
        return config_type(**options)
    if not isinstance(config, config_type):
        raise FtdynError(
            f"config: a {config_type.__name__} is needed, got {type(config).__name__}."
        )
    return config.replace(**options) if options else config


def _field(config_type: type, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(config_type):
        if f.name == name:
            return f
    raise KeyError(f"{config_type.__name__} has no field {name!r}")


#: the smallest ``memory_limit`` in bytes (64 MiB)
MIN_MEMORY_LIMIT = 64 * 2**20


def parse_memory(value) -> int | None:
    """'1GB', '512MB', '2GiB', '1e9' or an int -> bytes (decimal units; *iB binary)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        n = float(value)
    else:
        text = str(value).strip().upper().replace(" ", "")
        units = {
            "KIB": 2**10,
            "MIB": 2**20,
            "GIB": 2**30,
            "TIB": 2**40,
            "KB": 1e3,
            "MB": 1e6,
            "GB": 1e9,
            "TB": 1e12,
            "K": 1e3,
            "M": 1e6,
            "G": 1e9,
            "T": 1e12,
            "B": 1,
        }
        factor = 1.0
        for suffix, f in units.items():
            if text.endswith(suffix):
                text, factor = text[: -len(suffix)], f
                break
        try:
            n = float(text) * factor
        except ValueError:
            raise FtdynError(
                f"{arg('memory_limit')}: cannot read '{value}'; write e.g. 1GB, 512MB or 2GiB."
            ) from None
    if not math.isfinite(n):
        raise FtdynError(
            f"{arg('memory_limit')}: '{value}' is not a finite size; write e.g. 1GB, 512MB or 2GiB."
        )
    if n < MIN_MEMORY_LIMIT:
        # the minimum is binary (MiB): in bytes and in both unit systems, so that "64MB"
        # (decimal, 61 MiB) is not refused with a minimum that reads the same
        raise FtdynError(
            f"{arg('memory_limit')}: {value} ({n:.0f} bytes) is too small; the minimum is 64MiB"
            f" ({MIN_MEMORY_LIMIT} bytes): give at least 64MiB or 68MB (MB = 10^6 bytes, MiB ="
            " 2^20 bytes)."
        )
    return int(n)


def _names(value) -> tuple[str, ...] | None:
    """One name or several as a tuple; None for none (``None`` or empty)."""
    if value is None or len(value) == 0:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


def _internal(default: Any, help: str) -> Any:
    """A config field set by ftdyn itself (no command-line flag), e.g. for its convergence run."""
    return field(
        default=default, metadata={"help": help, "flag": None, "identity": False, "internal": True}
    )


#: Each command's config: its fields are the command's options. Filled by the package's
#: ``__init__`` once every command's module is imported (those modules use :func:`arg`, so this
#: one cannot import them).
COMMAND_CONFIGS: dict[str, type] = {}
#: Parameters of the Python API that are not config fields: {command: {Python name: CLI flag or
#: argument}}.
OTHER_PARAMETERS: dict[str, dict[str, str]] = {
    "train": {"data_dir": "DATA_DIR", "out": "--out"},
    "extract": {"series": "CKPTS_DIR", "data": "--data", "out": "--out"},
    "analyze": {"stores": "STORES", "out": "--out"},
    "visualize": {"store": "STORE", "out": "--out"},
    "report": {"results_dir": "RESULTS_DIR", "stores": "--store", "out": "--out"},
    "demo": {"out": "OUT_DIR", "device": "--device", "seed": "--seed"},
    "layers": {"arch": "ARCH", "input_size": "--input-size"},
    "info": {"store": "STORE"},
}


#: The command whose flags messages name; None: a Python caller, who gets parameter names. One
#: per process, not a ContextVar, because errors are also raised in worker threads (extraction's
#: writers, Dask's), which would not see a context set by the CLI.
_cli_command: str | None = None
_NO_VALUE = object()


def command_flags(command: str) -> dict[str, str]:
    """{Python parameter name: CLI flag or argument} of ``command`` (``probe_seed`` -> ``--seed``
    for extract; ``epochs`` -> ``--epoch`` for visualize, ``--epochs`` for train)."""
    config_type = COMMAND_CONFIGS.get(command)
    fields = dataclasses.fields(config_type) if config_type else ()
    flags = {f.name: flag_of(config_type, f.name) for f in fields if not f.metadata.get("internal")}
    return {**flags, **OTHER_PARAMETERS[command]}


@contextlib.contextmanager
def cli_names(command: str) -> Iterator[None]:
    """While running ``ftdyn COMMAND``: :func:`arg` names flags instead of Python parameters."""
    global _cli_command
    previous, _cli_command = _cli_command, command
    try:
        yield
    finally:
        _cli_command = previous


def cli_command() -> str | None:
    """The command whose flags :func:`arg` names now (None: Python parameter names); another
    process that reports errors for this one (a cluster's worker) names them the same way inside
    ``cli_names(cli_command())``."""
    return _cli_command


def arg(param: str, value: Any = _NO_VALUE) -> str:
    """Parameter ``param`` as a message names it: ``memory_limit`` from Python, ``--memory-limit``
    under the command line; with ``value``: ``memory_limit=2GB`` / ``--memory-limit 2GB``."""
    if _cli_command is None:
        return param if value is _NO_VALUE else f"{param}={value}"
    flag = command_flags(_cli_command).get(param) or "--" + param.replace("_", "-")
    return flag if value is _NO_VALUE else f"{flag} {value}"
