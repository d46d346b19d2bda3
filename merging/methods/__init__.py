"""Merge methods: one module per method family, each method one decorated function (`@merge_method`).

Adding a method is one decorated function in a module imported here; its declaration gives plan
validation, the UI's controls and the README's methods table (see `registry.py` for the contract).
"""

# Import order is registration order: the order of the UI's method list and the README's table.
from merging.methods.registry import CHUNK_ELEMENTS, REGISTRY, Method, ParamDef, get_method, merge_method, methods_table
from merging.methods.interpolation import linear, slerp
from merging.methods.task_arithmetic import task_arithmetic
from merging.methods.ties import ties
from merging.methods.dare import dare_linear, dare_ties
from merging.methods.breadcrumbs import breadcrumbs, breadcrumbs_ties
from merging.methods.della import della, della_linear
from merging.methods.model_stock import model_stock
from merging.methods.sce import sce
from merging.methods.ram import ram, ramplus_tl
from merging.methods.spherical import karcher, multislerp, nuslerp
from merging.methods.nearswap import nearswap
from merging.methods.arcee_fusion import arcee_fusion
from merging.methods.regmean import regmean, regmean_solve

__all__ = ["CHUNK_ELEMENTS", "REGISTRY", "Method", "ParamDef", "arcee_fusion", "breadcrumbs", "breadcrumbs_ties",
           "dare_linear", "dare_ties", "della", "della_linear", "get_method", "karcher", "linear", "merge_method",
           "methods_table", "model_stock", "multislerp", "nearswap", "nuslerp", "ram", "ramplus_tl", "regmean",
           "regmean_solve", "sce", "slerp", "task_arithmetic", "ties"]
