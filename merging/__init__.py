"""Mergescope's engine: resident-VLM, in-place, layer-wise merging with a text LLM. No UI code here."""

from merging.engine.merge_engine import ApplyReport, MergeEngine
from merging.errors import CheckpointError, LayoutError, MergescopeError, PlanError
from merging.model.pair import ModelPair, load_pair
from merging.plan.merge_plan import MergePlan

__all__ = ["ApplyReport", "CheckpointError", "LayoutError", "MergeEngine", "MergePlan", "MergescopeError",
           "ModelPair", "PlanError", "load_pair"]
