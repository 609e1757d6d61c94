"""Sketch rules, in per-target lists: the order is the order their seeds are measured in.

A new rule is one class in one file plus its entry here. Third-party packages add rules through
the entry-point group `nestor.sketch_rules` (an entry names a SketchRule subclass; its
`targets`, default ("cpu",), says which lists it joins), found without editing Nestor.
"""
from __future__ import annotations

import functools
import importlib.metadata
import warnings

from ...ir.machine import CPU, CUDA, MachineParams
from .base import Builder, SketchRule, StepRefused
from .gpu import BindSpatial
from .gpu_rows import GpuRowReductions
from .gpu_tiling import GpuTiling
from .rows import RowReductions
from .tile_seeds import BlockedConvTiles, ChannelTiles, LaneTiles, MatmulTiles
from .tiling import MultiLevelTiling

GROUP = "nestor.sketch_rules"

CPU_TILE_SEEDS = (LaneTiles(), BlockedConvTiles(), MatmulTiles(), ChannelTiles())
CPU_RULES: tuple[SketchRule, ...] = (RowReductions(), MultiLevelTiling(CPU_TILE_SEEDS))
CUDA_RULES: tuple[SketchRule, ...] = (GpuRowReductions(), GpuTiling(), BindSpatial())
RULES = {CPU: CPU_RULES, CUDA: CUDA_RULES}


def rules_for(machine: MachineParams) -> tuple[SketchRule, ...]:
    """The built-in rules of the machine's kind, then the plugins' for it."""
    return RULES[machine.kind] + tuple(r for r in plugin_rules() if machine.kind in getattr(r, "targets", (CPU,)))


@functools.cache
def plugin_rules() -> tuple[SketchRule, ...]:
    """Rules from the entry-point group; one that fails to load is left out with a warning."""
    found = []
    taken = {r.name for rules in RULES.values() for r in rules}
    for ep in importlib.metadata.entry_points(group=GROUP):
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, SketchRule) and cls.name):
                raise TypeError(f"{cls!r} is not a SketchRule subclass with a name")
            if cls.name in taken:
                raise ValueError(f"rule name {cls.name!r} is already taken")
            rule = cls()
        except Exception as err:  # third-party code must not break the built-in rules
            warnings.warn(f"sketch rule plugin {ep.name!r} ({ep.value}, entry point group {GROUP}) failed to "
                          f"load: {type(err).__name__}: {err}", stacklevel=2)
            continue
        taken.add(cls.name)
        found.append(rule)
    return tuple(found)


__all__ = ["Builder", "SketchRule", "StepRefused", "CPU_RULES", "CUDA_RULES", "rules_for", "plugin_rules"]
