"""Mergescope's engine: resident-VLM, in-place, layer-wise merging with a text LLM. No UI code here."""

from .engine import ApplyReport, MergeEngine
from .errors import CheckpointError, LayoutError, MergescopeError, PlanError
from .pair import ModelPair, load_pair
from .plan import MergePlan

__all__ = ["ApplyReport", "CheckpointError", "LayoutError", "MergeEngine", "MergePlan", "MergescopeError",
           "ModelPair", "PlanError", "load_pair"]
