"""Command line: a thin Typer layer over :mod:`ftdyn.api`.

Each command parses its options, calls the API function of the same name and
turns an :class:`~ftdyn.errors.FtdynError` into one line on stderr with exit code 2.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .errors import FtdynError

app = typer.Typer(
    name="ftdyn",
    help="Feature dynamics during fine-tuning: train -> extract -> analyze -> report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def user_errors(func):
    """Print an FtdynError as one line (no traceback) and exit with code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except FtdynError as exc:
            typer.echo(f"ftdyn: error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("ftdyn: interrupted; finished work is kept and a re-run resumes it.", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ftdyn {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Show the version and exit.")] = None,
) -> None:
    """ftdyn: what happens inside a CNN while it is fine-tuned."""


@app.command()
@user_errors
def layers(
    arch: Annotated[Optional[str], typer.Argument(help="Architecture name, e.g. resnet50.")] = None,
    input_size: Annotated[int, typer.Option(help="Input size in pixels used to compute output shapes.")] = 224,
    all_layers: Annotated[bool, typer.Option("--all", help="List every candidate, not only the defaults.")] = False,
    list_archs: Annotated[bool, typer.Option("--list", help="List all supported architectures.")] = False,
) -> None:
    """List the layers of ARCH that can be captured (defaults marked with *), with output shapes."""
    from . import models

    if list_archs or arch is None:
        typer.echo("\n".join(models.available_architectures()))
        return
    model = models.build_model(arch)
    defaults = models.default_layers(model, arch, input_size)
    for info in models.candidate_layers(model, input_size):
        if all_layers or info.name in defaults:
            mark = "*" if info.name in defaults else " "
            shape = "x".join(map(str, info.shape))
            typer.echo(f"{mark} {info.name:<50} {info.kind:<12} {shape}")
