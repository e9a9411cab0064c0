"""The signature an API function that takes a config's fields as ``**options`` really has.

``ftdyn.analyze(stores, *, out, config=None, **options)`` (and ``train``, ``extract``,
``visualize``) hands ``options`` to a frozen config dataclass of :mod:`ftdyn.config`, the one
place that holds their defaults and checks their values. Python alone would show a notebook user
``**options``; :func:`takes_options` gives the function a ``__signature__`` with every option as
a keyword-only parameter and its default, read from the dataclass, so ``help()``,
``inspect.signature`` and completion list them while the config stays the one source.

This module imports nothing of ftdyn: the API modules decorate their functions with it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import TypeVar

Function = TypeVar("Function", bound=Callable)


def takes_options(config_type: type) -> Callable[[Function], Function]:
    """Decorator: set the function's ``__signature__`` to :func:`options_signature` (the function
    itself is returned unchanged otherwise, so it still receives ``**options``)."""

    def apply(function: Function) -> Function:
        function.__signature__ = options_signature(function, config_type)
        return function

    return apply


def options_signature(function: Callable, config_type: type) -> inspect.Signature:
    """``function``'s own parameters without ``**options``, then one keyword-only parameter per
    field of the dataclass ``config_type``: its default (none for a required field) and type.

    Fields ftdyn sets itself (``metadata["internal"]``) are left out, as the command line and
    :func:`ftdyn.config.describe` leave them out; a field named like one of the function's own
    parameters is the function's.
    """
    own = [
        parameter
        for parameter in inspect.signature(function).parameters.values()
        if parameter.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    taken = {parameter.name for parameter in own}
    options = [
        inspect.Parameter(
            option.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=(
                inspect.Parameter.empty if option.default is dataclasses.MISSING else option.default
            ),
            annotation=option.type,
        )
        for option in dataclasses.fields(config_type)
        if not option.metadata.get("internal") and option.name not in taken
    ]
    return inspect.signature(function).replace(parameters=[*own, *options])
