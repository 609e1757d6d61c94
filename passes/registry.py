"""Passes by name: the built-ins, then third-party passes from the entry-point group `nestor.passes`.

A plugin package declares, in its pyproject.toml,

    [project.entry-points."nestor.passes"]
    my_pass = "my_package.module:MyPass"    # a Pass subclass

Plugins are loaded once, on the first lookup. One that fails to load (import error, not a Pass,
a name taken) is left out with a warning and its error kept: asking for it by name raises that
error, which names the entry point; the built-ins and the other plugins keep working.
"""
from __future__ import annotations

import functools
import importlib.metadata
import warnings

from ..ir.errors import NestorError
from .annotate import Bind, Parallel, Unroll, Vectorize
from .base import Pass
from .cache import CacheRead, CacheWrite
from .default import DefaultNest
from .layout import Pack
from .loops import Distribute, Fuse, Reorder, Split, Tile
from .merge import Merge
from .rfactor import Rfactor, TreeCombine
from .stages import ComputeAt, Inline

GROUP = "nestor.passes"
BUILTINS: dict[str, type[Pass]] = {p.name: p for p in (
    Split, Tile, Reorder, Fuse, Distribute, ComputeAt, Inline, CacheWrite, CacheRead, Pack, Rfactor, TreeCombine, Merge,
    Parallel, Vectorize, Unroll, Bind, DefaultNest)}


class PassNotFound(NestorError):
    pass


@functools.cache
def _plugins() -> tuple[dict[str, type[Pass]], dict[str, str]]:
    """(name -> pass class, name -> why the plugin of that entry point failed to load)."""
    found: dict[str, type[Pass]] = {}
    broken: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group=GROUP):
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Pass) and cls.name):
                raise TypeError(f"{cls!r} is not a Pass subclass with a name")
            if cls.name in BUILTINS or cls.name in found:
                raise ValueError(f"pass name {cls.name!r} is already taken")
        except Exception as err:  # any failure of third-party code must not break the rest
            broken[ep.name] = (f"pass plugin {ep.name!r} ({ep.value}, entry point group {GROUP}) "
                               f"failed to load: {type(err).__name__}: {err}")
            warnings.warn(broken[ep.name], stacklevel=2)
            continue
        found[cls.name] = cls
    return found, broken


def list_passes() -> dict[str, type[Pass]]:
    """Every usable pass, name -> class (`cls.parameters()` gives its parameters)."""
    return {**BUILTINS, **_plugins()[0]}


def plugin_errors() -> dict[str, str]:
    """Entry point name -> why it failed to load."""
    return dict(_plugins()[1])


def get_pass(name: str) -> type[Pass]:
    passes = list_passes()
    if name in passes:
        return passes[name]
    broken = _plugins()[1]
    if name in broken:
        raise PassNotFound(broken[name])
    raise PassNotFound(f"unknown pass {name!r}; known passes: {', '.join(sorted(passes))}")
