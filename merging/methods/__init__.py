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
from .breadcrumbs import breadcrumbs, breadcrumbs_ties
from .della import della, della_linear
from .model_stock import model_stock
from .sce import sce
from .ram import ram, ramplus_tl
from .spherical import karcher, multislerp, nuslerp
from .nearswap import nearswap
from .arcee_fusion import arcee_fusion
from .regmean import regmean, regmean_solve

__all__ = ["CHUNK_ELEMENTS", "REGISTRY", "Method", "ParamDef", "arcee_fusion", "breadcrumbs", "breadcrumbs_ties",
           "dare_linear", "dare_ties", "della", "della_linear", "get_method", "karcher", "linear", "merge_method",
           "methods_table", "model_stock", "multislerp", "nearswap", "nuslerp", "ram", "ramplus_tl", "regmean",
           "regmean_solve", "sce", "slerp", "task_arithmetic", "ties"]
