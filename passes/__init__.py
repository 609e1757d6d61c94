"""Kernel → kernel transformations."""
from .default import default_schedule, DefaultNest
from .base import Made, Pass, ScheduleError
from .loops import Split, Tile, Reorder, Fuse, Distribute
from .cache import CacheWrite, CacheRead
from .stages import ComputeAt, Inline, inline_copies
from .layout import Pack
from .rfactor import Rfactor, TreeCombine
from .merge import Merge
from .annotate import Parallel, Vectorize, Unroll, Bind
from .registry import get_pass, list_passes, plugin_errors, PassNotFound
from .schedule import Schedule, canonical_loops, parse_pipeline, PipelineSyntaxError
