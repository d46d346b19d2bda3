"""The search space of `mergescope search`: which curve (and merge method) each component group may take.

A space file (YAML), checked with the same bounded parsing as plans (merging.limits):

    groups:                          # each group becomes one plan rule (first match wins, in this order)
      attention: {anchors: 3, range: [0.0, 1.0]}        # K anchors, each in [lo, hi]: mergekit's gradient
      mlp: {preset: loglinear, start: 0.0, end: [0.0, 1.0]}   # a preset; a [lo, hi] pair is searched
      norms: {fixed: {preset: constant, value: 0.0}}   # a fixed curve (never searched)
      heads: {components: [lm_head], anchors: 2, range: [0, 0.5],    # any plan components
              method: [linear, slerp]}                  # a categorical merge method ...
      mlp_ties: {components: [mlp], anchors: 2, method: ties,
                 params: {density: [0.2, 0.9]}}         # ... and ranges for its parameters
    method: linear                   # the default merge method of every group (optional)
    objectives:                      # optional: name → categories of the eval set (default: all items)
      perception: [count, colour, shape, position]
      text: [arith, text_count, text_plus]
    max_new_tokens: 16               # generation budget of the `accuracy` fitness (optional, default 32)

Groups named `attention`, `mlp`, `norms` or `embeddings_head` stand for the UI's groups
(`probe.GROUP_COMPONENTS`); any other name needs `components`. A value written `[lo, hi]` where a
number is meant (a preset's α or layer parameter, a method parameter) is searched over that range;
a plain number is fixed. With one objective a study maximises it; with two it looks for the Pareto
front. Optuna names each parameter `group.anchor<k>`, `group.<param>`, `group.method`, `group.<method>.<param>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from merging.plan import curves
from merging.errors import MergescopeError, PlanError
from merging.limits import MAX_LIST, bounded_int, brief, parse_document
from merging.methods import get_method
from merging.plan.merge_plan import MergePlan
from merging.run.probe import GROUP_COMPONENTS

MAX_ANCHORS = 64
MAX_OBJECTIVES = 2  # NSGA-II and the Pareto front are for two; more would not be drawn or reported
DEFAULT_MAX_NEW_TOKENS = 32
UI_GROUPS = {"attention": "Attention", "mlp": "MLP", "norms": "Norms", "embeddings_head": "Embeddings/Head"}
_GROUP_KEYS = {"components", "anchors", "range", "preset", "fixed", "method", "params"}


class Suggester(Protocol):
    """What a space asks of an Optuna trial (optuna.Trial and optuna.trial.FixedTrial both are one)."""
    def suggest_float(self, name: str, low: float, high: float) -> float: ...
    def suggest_int(self, name: str, low: int, high: int) -> int: ...
    def suggest_categorical(self, name: str, choices: list) -> Any: ...


@dataclass(frozen=True)
class Range:
    """A searched number in [low, high]; `kind` is float or int (a layer index)."""
    low: float
    high: float
    kind: type = float

    def suggest(self, trial: Suggester, name: str) -> float | int:
        if self.kind is int:
            return trial.suggest_int(name, int(self.low), int(self.high))
        return trial.suggest_float(name, self.low, self.high)


@dataclass(frozen=True)
class GroupSpace:
    """One group: its plan components, its curve (anchors, a preset with ranges, or fixed), and its
    method(s) with their parameters (each a number or a Range)."""
    name: str
    components: tuple[str, ...]
    curve: dict                         # {"anchors": K, "range": Range} | {"preset": ..., param: value|Range}
    methods: tuple[str, ...]            # one: fixed; several: categorical
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # method → param → number | Range

    def suggest_rule(self, trial: Suggester) -> dict:
        """The plan rule of this group for one trial."""
        method = self.methods[0] if len(self.methods) == 1 else \
            trial.suggest_categorical(f"{self.name}.method", list(self.methods))
        prefix = f"{self.name}." if len(self.methods) == 1 else f"{self.name}.{method}."
        params = {k: v.suggest(trial, prefix + k) if isinstance(v, Range) else v
                  for k, v in self.params.get(method, {}).items()}
        return {"components": list(self.components), "method": method, "curve": self._curve(trial), "params": params}

    def _curve(self, trial: Suggester) -> dict:
        if "anchors" in self.curve:
            span: Range = self.curve["range"]
            values = [span.suggest(trial, f"{self.name}.anchor{k}") for k in range(self.curve["anchors"])]
            return {"preset": "anchors", "values": values}
        return {k: v.suggest(trial, f"{self.name}.{k}") if isinstance(v, Range) else v for k, v in self.curve.items()}

    @property
    def searched(self) -> bool:
        """Whether anything of this group is searched (False for a fixed curve with fixed parameters)."""
        values = [*self.curve.values(), *(v for p in self.params.values() for v in p.values())]
        return len(self.methods) > 1 or "anchors" in self.curve or any(isinstance(v, Range) for v in values)


@dataclass(frozen=True)
class SearchSpace:
    """A parsed space file: groups in rule order, objectives (name → categories, None = every item),
    and the generation budget of the accuracy fitness."""
    groups: tuple[GroupSpace, ...]
    objectives: tuple[tuple[str, tuple[str, ...] | None], ...] = (("accuracy", None),)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS

    def suggest(self, trial: Suggester) -> MergePlan:
        """The plan of one trial: one rule per group, in the file's order. Raises PlanError for a
        combination the plan rejects (e.g. a method parameter out of its bounds)."""
        return MergePlan.from_dict({"rules": [g.suggest_rule(trial) for g in self.groups]})

    @property
    def objective_names(self) -> list[str]:
        return [name for name, _ in self.objectives]


def load_space(path: str | Path) -> SearchSpace:
    """The space file at `path`; MergescopeError (one line) if unreadable or invalid."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise MergescopeError(f"{path}: cannot read the search space ({exc.strerror})") from exc
    return parse_space(text, str(path))


def parse_space(text: str, where: str = "space") -> SearchSpace:
    """A SearchSpace from YAML text; MergescopeError naming the first bad place. Every group's choices
    are resolved once against the plan parser (a trial at each range's low end), so a space that can
    only produce bad plans is refused here, not at trial 0."""
    data = parse_document(text, where)
    if not isinstance(data, dict) or not isinstance(data.get("groups"), dict) or not data["groups"]:
        raise MergescopeError(f"{where}: a search space is a mapping with a non-empty 'groups' mapping, "
                              f"like {{groups: {{attention: {{anchors: 3}}}}}}, got {brief(data)}")
    extra = sorted(set(data) - {"groups", "method", "objectives", "max_new_tokens"})
    if extra:
        raise MergescopeError(f"{where}: unknown key(s) {extra}; a space has groups, method, objectives and "
                              "max_new_tokens")
    default_method = data.get("method", "linear")
    groups = tuple(_group(name, spec, default_method, f"{where}: groups.{name}")
                   for name, spec in data["groups"].items())
    if not any(g.searched for g in groups):
        raise MergescopeError(f"{where}: every group is fixed: nothing to search")
    space = SearchSpace(groups, _objectives(data.get("objectives"), where),
                        bounded_int(data.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS), f"{where}: max_new_tokens",
                                    1, 4096))
    try:
        space.suggest(_LowEnd())
    except PlanError as exc:
        raise MergescopeError(f"{where}: {exc}") from None
    return space


def _group(name: object, spec: object, default_method: object, where: str) -> GroupSpace:
    if not isinstance(spec, dict):
        raise MergescopeError(f"{where}: a group is a mapping like {{anchors: 3, range: [0, 1]}}, got {brief(spec)}")
    preset = curves.PRESETS.get(spec["preset"]) if isinstance(spec.get("preset"), str) else None
    allowed = _GROUP_KEYS | (set(preset.kinds) | {"non_layer"} if preset else set())
    unknown = sorted(set(spec) - allowed, key=str)
    if unknown:
        raise MergescopeError(f"{where}: unknown key(s) {unknown}; this group takes {sorted(allowed)}")
    components = spec.get("components")
    if components is None:
        if name not in UI_GROUPS:
            raise MergescopeError(f"{where}: name its 'components' (or use a group name of {sorted(UI_GROUPS)})")
        components = list(GROUP_COMPONENTS[UI_GROUPS[name]])
    if not isinstance(components, list) or not components or not all(isinstance(c, str) for c in components):
        raise MergescopeError(f"{where}: components must be a non-empty list of names, got {brief(components)}")
    methods = spec.get("method", default_method)
    methods = methods if isinstance(methods, list) else [methods]
    if not methods or len(set(map(str, methods))) != len(methods):
        raise MergescopeError(f"{where}: method must be a name or a list of distinct names, got {brief(methods)}")
    try:
        resolved = [get_method(m, f"{where}.method") for m in methods]
    except PlanError as exc:
        raise MergescopeError(str(exc)) from None
    return GroupSpace(str(name), tuple(components), _curve(spec, where), tuple(m.name for m in resolved),
                      _params(spec.get("params", {}), resolved, where))


def _curve(spec: dict, where: str) -> dict:
    ways = [k for k in ("anchors", "preset", "fixed") if k in spec]
    if len(ways) != 1:
        raise MergescopeError(f"{where}: give exactly one of anchors, preset or fixed, got {ways or 'none'}")
    if "fixed" in spec:
        if not isinstance(spec["fixed"], dict):
            raise MergescopeError(f"{where}.fixed: a curve like {{preset: constant, value: 0}}, "
                                  f"got {brief(spec['fixed'])}")
        return dict(spec["fixed"])
    if "anchors" in spec:
        count = bounded_int(spec["anchors"], f"{where}.anchors", 1, MAX_ANCHORS)
        return {"anchors": count, "range": _range(spec.get("range", [0.0, 1.0]), f"{where}.range", float, 0.0, 1.0)}
    name = spec["preset"]
    preset = curves.PRESETS.get(name) if isinstance(name, str) else None
    if preset is None or name in ("anchors", "custom"):
        searchable = sorted(set(curves.PRESETS) - {"anchors", "custom"})
        raise MergescopeError(f"{where}.preset: {brief(name)} is not a preset with parameters; choose from "
                              f"{searchable} (or use anchors)")
    if "range" in spec:
        raise MergescopeError(f"{where}: 'range' goes with anchors; give a preset's ranges as its parameters")
    curve: dict[str, Any] = {"preset": name}
    for key, kind in preset.kinds.items():
        if key not in spec:
            raise MergescopeError(f"{where}: preset {name} needs {key} (a number or a [lo, hi] range)")
        value = spec[key]
        if isinstance(value, list):
            value = _range(value, f"{where}.{key}", int if kind == "layer" else float,
                           0.0, MAX_LIST if kind == "layer" else 1.0)
        curve[key] = value
    if "non_layer" in spec:
        curve["non_layer"] = spec["non_layer"]
    return curve


def _params(spec: object, methods: list, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(spec, dict):
        raise MergescopeError(f"{where}.params: a mapping of parameter → number or [lo, hi], got {brief(spec)}")
    known = {p.name: p for m in methods for p in m.params}
    unknown = sorted(set(spec) - set(known), key=str)
    if unknown:
        raise MergescopeError(f"{where}.params: no method of {[m.name for m in methods]} takes {unknown}; "
                              f"they take {sorted(known) or 'none'}")
    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        mine = {p.name: p for p in method.params}
        out[method.name] = {k: _range(v, f"{where}.params.{k}", mine[k].kind, mine[k].low, mine[k].high)
                            if isinstance(v, list) else v for k, v in spec.items() if k in mine}
    return out


def _range(value: object, where: str, kind: type, low: float, high: float) -> Range:
    numbers = isinstance(value, list) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not numbers or not (low <= value[0] < value[1] <= high) or (kind is int and not all(
            float(v).is_integer() for v in value)):
        what = "integers" if kind is int else "numbers"
        raise MergescopeError(f"{where}: a range is [lo, hi] of {what} with {low:g} ≤ lo < hi ≤ {high:g}, "
                              f"got {brief(value)}")
    return Range(kind(value[0]), kind(value[1]), kind)


def _objectives(spec: object, where: str) -> tuple[tuple[str, tuple[str, ...] | None], ...]:
    if spec is None:
        return (("accuracy", None),)
    if not isinstance(spec, dict) or not 1 <= len(spec) <= MAX_OBJECTIVES:
        raise MergescopeError(f"{where}: objectives maps 1 or {MAX_OBJECTIVES} names to lists of categories, "
                              f"got {brief(spec)}")
    out = []
    for name, categories in spec.items():
        if categories == "all":
            out.append((str(name), None))
        elif isinstance(categories, list) and categories and all(isinstance(c, str) for c in categories):
            out.append((str(name), tuple(categories)))
        else:
            raise MergescopeError(f"{where}: objectives.{name} must be 'all' or a list of category names, "
                                  f"got {brief(categories)}")
    return tuple(out)


class _LowEnd:
    """A trial that takes every range's low end and every categorical's first choice (parse-time check)."""
    def suggest_float(self, name: str, low: float, high: float) -> float:
        return low

    def suggest_int(self, name: str, low: int, high: int) -> int:
        return low

    def suggest_categorical(self, name: str, choices: list) -> Any:
        return choices[0]

