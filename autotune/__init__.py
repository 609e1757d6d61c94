"""autotune"""
from .records import Record, Records, RecordsError
from .measure import Measurer, MeasureResult
from .budget import Budget
