"""MergePlan: which tensors to merge, how, and with what per-layer α.

A plan is data — a list of rules `{components, method, curve, params}`; the first rule whose
components match a tensor decides its merge; tensors no rule matches keep the VLM's values (so the
empty plan is the base VLM). Plans round-trip through YAML and JSON, and have a canonical JSON form
(sorted keys and components, method defaults filled in) whose hash identifies the configuration.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from merging.plan import curves
from merging.errors import MergescopeError, PlanError
from merging.model.layout import KNOWN_COMPONENTS, Layout, Slot
from merging.limits import MAX_RULES, brief, check_tree, parse_document
from merging.methods import get_method

PLAN_NAME = "mergescope_plan.yaml"  # the file a plan is saved as beside an exported checkpoint


@dataclass(frozen=True)
class Target:
    """What one tensor should hold: the merge of VLM and donor by `method` at `alpha` (the donor's
    weight, in [0, 1]) with the method's `params`; `grams` identifies the Gram files a RegMean value
    was computed with (None for every other method), so other statistics make it a different target."""

    method: str
    alpha: float
    params: tuple[tuple[str, float | int], ...] = ()
    grams: str | None = None


@dataclass(frozen=True)
class Rule:
    """One rule of a plan: which components, merged by which method, with which α curve and parameters."""
    components: tuple[str, ...]
    method: str
    curve: dict
    params: dict

    def to_dict(self) -> dict:
        """The rule as plain data (the plan file's form)."""
        return {"components": list(self.components), "method": self.method,
                "curve": dict(self.curve), "params": dict(self.params)}


@dataclass(frozen=True)
class MergePlan:
    """A merge plan: rules tried in order; the first whose components match a tensor decides its merge.

    Immutable; the empty plan is the base VLM. Built with `from_dict`, `from_text` or `load`, which raise
    PlanError naming the bad place."""
    rules: tuple[Rule, ...] = ()

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: object) -> "MergePlan":
        """A plan from parsed data ({rules: [...]}); PlanError (or its LimitError kin, merging.limits) with one
        line naming the first bad place and what to change."""
        if not isinstance(data, dict) or not isinstance(data.get("rules", []), list):
            raise PlanError(f"a plan is a mapping with a 'rules' list, got {brief(data)}")
        try:  # string keys, bounded lists and numbers: checked before anything is built
            check_tree(data, "plan")
        except MergescopeError as exc:
            raise PlanError(str(exc)) from None
        if len(data.get("rules", [])) > MAX_RULES:
            raise PlanError(f"plan: {len(data['rules'])} rules; the limit is {MAX_RULES}")
        extra = sorted(set(data) - {"rules"})
        if extra:
            raise PlanError(f"plan: unknown top-level key(s) {brief(extra)}; a plan has only 'rules'")
        return cls(tuple(_parse_rule(r, f"rules[{i}]") for i, r in enumerate(data.get("rules", []))))

    @classmethod
    def from_text(cls, text: str) -> "MergePlan":
        """Parse JSON or YAML. JSON goes to the JSON parser first: PyYAML reads YAML 1.1, where a JSON
        number such as 1e-30 (no dot) is a string, not a float. Sizes are checked before parsing
        and YAML aliases are refused (merging.limits); raises PlanError."""
        try:
            data = parse_document(text, "plan", json_first=True)
        except PlanError:
            raise
        except MergescopeError as exc:  # limits speak MergescopeError; plans speak PlanError
            raise PlanError(str(exc)) from None
        return cls.from_dict({"rules": []} if data is None else data)

    @classmethod
    def load(cls, path: str | Path) -> "MergePlan":
        """A plan from a YAML or JSON file; PlanError if unreadable or invalid."""
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise PlanError(f"cannot read plan file {path}: {exc.strerror}") from exc
        return cls.from_text(text)

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"rules": [r.to_dict() for r in self.rules]}

    def to_yaml(self) -> str:
        """The plan as YAML, rules in order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def canonical_json(self) -> str:
        """Sorted-key, compact JSON with every default filled in: equal plans give equal text."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    def hash(self) -> str:
        """The first 16 hex digits of the SHA-256 of `canonical_json`: the plan's identity."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    # -- resolution against a model ----------------------------------------------------------
    def targets(self, layout: Layout, has_base: bool = False) -> dict[str, Target]:
        """Slot name → Target for every tensor the plan merges; raises PlanError before any write."""
        per_rule = []
        for i, rule in enumerate(self.rules):
            method = get_method(rule.method, f"rules[{i}].method")
            if method.needs_base and not has_base:
                raise PlanError(f"rules[{i}]: method {rule.method!r} needs a base model (the common "
                                f"ancestor of VLM and donor); none was given")
            if rule.curve["preset"] == "step" and rule.curve["layer"] > layout.num_layers:
                raise PlanError(f"rules[{i}].curve.layer: {rule.curve['layer']} is beyond the model's "
                                f"{layout.num_layers} layers")
            try:
                alphas = curves.layer_alphas(rule.curve, layout.num_layers)
            except PlanError as exc:
                raise PlanError(f"rules[{i}].curve: {exc}") from None
            per_rule.append((rule, alphas, tuple(sorted(rule.params.items()))))
        targets = {}
        for slot in layout.slots:
            for rule, alphas, params in per_rule:
                if any(slot.matches(c) for c in rule.components):
                    targets[slot.name] = Target(rule.method, _slot_alpha(slot, rule, alphas), params)
                    break
        return targets


def _slot_alpha(slot: Slot, rule: Rule, alphas: list[float]) -> float:
    return alphas[slot.layer] if slot.layer is not None else curves.non_layer_alpha(rule.curve, alphas)


def _parse_rule(rule: object, where: str) -> Rule:
    if not isinstance(rule, dict):
        raise PlanError(f"{where}: a rule is a mapping with components, method, curve, params; got {brief(rule)}")
    extra = sorted(set(rule) - {"components", "method", "curve", "params"})
    if extra:
        raise PlanError(f"{where}: unknown key(s) {brief(extra)}")
    components = rule.get("components")
    if isinstance(components, str):
        components = [components]
    if not isinstance(components, list) or not components or not all(isinstance(c, str) for c in components):
        raise PlanError(f"{where}.components: a non-empty list of component names, got {brief(components)}")
    unknown = sorted(set(components) - KNOWN_COMPONENTS)
    if unknown:
        raise PlanError(f"{where}.components: unknown component(s) {brief(unknown)}; "
                        f"known: {sorted(KNOWN_COMPONENTS)}")
    method = get_method(rule.get("method", "linear"), f"{where}.method")
    if "curve" not in rule:
        raise PlanError(f"{where}: missing 'curve' (e.g. {{preset: constant, value: 0.4}})")
    curve = curves.normalize_curve(rule["curve"], f"{where}.curve")
    params = method.normalize_params(rule.get("params"), f"{where}.params")
    return Rule(tuple(sorted(set(components))), method.name, curve, params)
