"""autotune"""
from .records import Record, Records, RecordsError
