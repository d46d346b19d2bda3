"""Merge methods: one module per method family, each method one decorated function (`@merge_method`).

Adding a method is one decorated function in a module imported here; its declaration gives plan
validation, the UI's controls and the README's methods table (see `registry.py` for the contract).
"""

# Import order is registration order: the order of the UI's method list and the README's table.
from .registry import CHUNK_ELEMENTS, REGISTRY, Method, ParamDef, get_method, merge_method, methods_table
from .interpolation import linear, slerp
from .task_arithmetic import task_arithmetic
from .ties import ties
from .dare import dare_linear, dare_ties
from .regmean import regmean, regmean_solve

__all__ = ["CHUNK_ELEMENTS", "REGISTRY", "Method", "ParamDef", "dare_linear", "dare_ties", "get_method", "linear",
           "merge_method", "methods_table", "regmean", "regmean_solve", "slerp", "task_arithmetic", "ties"]
