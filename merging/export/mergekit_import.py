"""A mergekit configuration read back as a Mergescope plan: the inverse of `merging.export.mergekit_config`.

Mapping (mergekit 0.1.5, by the table the export uses, `merging.methods.mergekit.MERGEKIT`):
- the VLM is the first non-base model listed (for slerp, nearswap and arcee_fusion: `base_model`),
  the donor the other one; for the task-vector methods `base_model` is the common base;
- α is the donor's weight: weights (w_V, w_L) give α = w_L / (w_V + w_L) where mergekit normalizes
  them (`normalize`, on by default for linear, ties and della), else they must sum to 1; slerp's `t` is α;
  mergekit's weightless methods give α = 1;
- each parameter `filter` becomes a rule on the component it names (`self_attn`, `.mlp.`, `q_proj`,
  `embed_tokens`, `.norm.`, `lm_head`; first match wins, as in a plan), the unfiltered entry the rule on
  `all` (α = 0 there: no rule, the tensors keep the VLM); a scalar becomes a constant curve, a gradient
  the `anchors` curve (mergekit's gradient is that formula), per layer over single-layer slices a
  `custom` curve;
- `dtype`, `out_dtype` and `int8_mask` only set the merge run's numerics and are ignored.
Everything a plan cannot express is refused with `MergekitUnsupported`, one line naming the key:
frankenmerge slices (passthrough, other layer ranges), tokenizer surgery, more than two models,
per-model parameters that differ, gradients of method parameters, filters naming no component.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from merging.errors import MergescopeError
from merging.export.mergekit_config import evaluate_setting
from merging.limits import brief, parse_document
from merging.methods import get_method
from merging.methods.mergekit import MERGEKIT, MergekitUnsupported
from merging.model.layout import KNOWN_COMPONENTS
from merging.plan.merge_plan import MergePlan

_IGNORED = frozenset({"dtype", "out_dtype"})
_REFUSED = {"tokenizer_source": "tokenizer surgery", "tokenizer": "tokenizer surgery",
            "chat_template": "a chat template", "modules": "per-module merges"}
_NORMALIZED = frozenset({"linear", "ties", "della"})  # mergekit 0.1.5's default_normalize=True methods
_NON_LAYER = {"embed_tokens": "embed_tokens", "lm_head": "lm_head", ".norm.": "norm"}
_TOL = 1e-9


@dataclass(frozen=True)
class MergekitImport:
    """An imported configuration: the plan and the model names mergekit's file gave (vlm, donor, base)."""

    plan: MergePlan
    vlm: str
    donor: str
    base: str | None


def _refuse(key: str, why: str):
    raise MergekitUnsupported(f"{key}: {why}")


def _component(flt: str | None, where: str) -> str:
    if flt is None or flt == "*":
        return "all"
    if flt in _NON_LAYER:
        return _NON_LAYER[flt]
    name = flt.strip(".")
    if name in KNOWN_COMPONENTS and name not in ("all", "norm"):
        return name
    _refuse(f"{where}.filter", f"{flt!r} names no Mergescope component (filters Mergescope reads: self_attn, mlp, "
                               f"q_proj, …, embed_tokens, .norm., lm_head)")


def _entries(setting: Any, key: str) -> list[tuple[str | None, Any]]:
    """A mergekit setting as [(filter, value)], first match wins; a scalar or gradient is one unfiltered entry."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, list) and setting and all(isinstance(e, dict) for e in setting):
        out = []
        for i, entry in enumerate(setting):
            extra = sorted(set(entry) - {"filter", "value"})
            if extra or "value" not in entry:
                _refuse(f"{key}[{i}]", f"a filtered entry is {{filter, value}}, got keys {brief(sorted(entry))}")
            out.append((entry.get("filter"), entry["value"]))
            if entry.get("filter") in (None, "*"):
                break  # mergekit never reads past an unfiltered entry
        return out
    return [(None, setting)]


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    _refuse(key, f"a number or a list of numbers, got {brief(value)}")


def _anchors(value: Any, key: str) -> list[float]:
    if isinstance(value, list) and value:
        return [_number(v, f"{key}[{i}]") for i, v in enumerate(value)]
    return [_number(value, key)]


def _sources(config: dict) -> tuple[list[list[dict]], list[dict | None], list[tuple[int, int]] | None, str]:
    """(model entries and shared-parameter scope per slice — one for the models form —, per-slice layer ranges
    or None, the first entries' key)."""
    if "models" in config and "slices" in config:
        _refuse("slices", "give models or slices, not both")
    if "models" in config:
        models = config["models"]
        if not isinstance(models, list) or not models or not all(isinstance(m, dict) for m in models):
            _refuse("models", f"a list of {{model, parameters}} entries, got {brief(models)}")
        return [models], [None], None, "models"
    slices = config.get("slices")
    if not isinstance(slices, list) or not slices or not all(isinstance(s, dict) and isinstance(s.get("sources"), list)
                                                             for s in slices):
        _refuse("slices", f"a list of {{sources: [...]}} entries, got {brief(slices)}")
    ranges, start = [], 0
    for i, piece in enumerate(slices):
        spans = {tuple(s.get("layer_range", ())) for s in piece["sources"] if isinstance(s, dict)}
        if len(spans) != 1 or len(next(iter(spans))) != 2:
            _refuse(f"slices[{i}].sources", "every source of a slice must take the same layer_range; Mergescope "
                                            "merges layer l of the VLM with layer l of the donor (no frankenmerge)")
        low, high = next(iter(spans))
        if low != start or high <= low:
            _refuse(f"slices[{i}].sources[0].layer_range", f"[{low}, {high}] does not continue at layer {start}: "
                                                           f"layers stacked from other ranges are a frankenmerge")
        ranges.append((low, high))
        start = high
    names = [[s.get("model") for s in piece["sources"]] for piece in slices]
    if any(n != names[0] for n in names):
        _refuse("slices", "every slice must merge the same models in the same order")
    return ([piece["sources"] for piece in slices], [piece.get("parameters") for piece in slices], ranges,
            "slices[0].sources")


def _roles(config: dict, method: str, models: list[dict], key: str) -> tuple[int, int, str | None]:
    """(index of the VLM's entry, index of the donor's, the base model's name)."""
    names = [m.get("model") for m in models]
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            _refuse(f"{key}[{i}].model", f"a model name or path, got {brief(name)}")
    base = config.get("base_model")
    if base is not None and not isinstance(base, str):
        _refuse("base_model", f"a model name or path, got {brief(base)}")
    spec = MERGEKIT[method]
    if spec.base == "common" and base is None:
        _refuse("base_model", f"mergekit's {method} needs base_model (Mergescope's base)")
    others = [i for i, n in enumerate(names) if n != base or spec.base == "vlm"]
    if spec.base == "vlm":
        if base not in names:
            _refuse("base_model", f"{method} merges into base_model, which must be one of the models (the VLM)")
        others.sort(key=lambda i: names[i] != base)  # the VLM first
    if len(others) != 2:
        _refuse(key, f"{len(others)} models to merge ({', '.join(names[i] for i in others)}); Mergescope merges two: "
                     f"a VLM and a donor")
    return others[0], others[1], base if spec.base == "common" else None


def _setting(models: list[dict], scopes: list, model: int | None, param: str, default: Any, key: str):
    """(key it came from, entries) of `param` for `model`'s entry (None: shared) in mergekit's scope order."""
    for where, scope in ([(f"{key}[{model}].parameters", models[model].get("parameters"))] if model is not None
                         else []) + scopes:
        if isinstance(scope, dict) and param in scope:
            return f"{where}.{param}", _entries(scope[param], f"{where}.{param}")
    return f"parameters.{param}", [(None, default)]


def _check_scopes(method: str, models: list[dict], scopes: list, key: str) -> None:
    spec = MERGEKIT[method]
    known = {spec.mk(n) for n in spec.per_model + spec.shared} | {k for k, _ in spec.fixed} | {"normalize", "int8_mask"}
    known |= {"weight"} if spec.weights == "models" else {"t"} if spec.weights == "t" else set()
    named = [(f"{key}[{i}].parameters", m.get("parameters")) for i, m in enumerate(models)] + scopes
    for where, scope in named:
        if scope is None:
            continue
        if not isinstance(scope, dict):
            _refuse(where, f"a mapping of parameters, got {brief(scope)}")
        for name in sorted(set(scope) - known):
            _refuse(f"{where}.{name}", f"mergekit's {method} parameter {name!r} has no counterpart in Mergescope's")
    for name, value in spec.fixed:
        for where, scope in scopes:
            if isinstance(scope, dict) and name in scope and scope[name] != value and name != "normalize":
                _refuse(f"{where}.{name}", f"Mergescope's {method} always runs with {name}: {str(value).lower()}")


def _columns(method: str, models: list[dict], roles: tuple[int, int], scopes: list, key: str) -> dict:
    """Name → (key, [(filter, value)]) of every quantity the plan needs: the weights (or t) and each parameter."""
    spec = MERGEKIT[method]
    vlm, donor = roles
    cols: dict[str, tuple[str, list]] = {}
    if spec.weights == "models":
        cols["w_vlm"] = _setting(models, scopes, vlm, "weight", None, key)
        cols["w_donor"] = _setting(models, scopes, donor, "weight", None, key)
    elif spec.weights == "t":
        cols["t"] = _setting(models, scopes, None, "t", None, key)
    ours = {p.name: p.default for p in get_method(method).params}
    for name in spec.per_model:
        cols[f"vlm:{name}"] = _setting(models, scopes, vlm, spec.mk(name), ours[name], key)
        cols[name] = _setting(models, scopes, donor, spec.mk(name), ours[name], key)
    for name in spec.shared:
        default = int(method in _NORMALIZED) if name == "normalize" else ours[name]
        cols[name] = _setting(models, scopes, None, spec.mk(name), default, key)
    if "normalize" not in cols and spec.weights == "models":
        cols["normalize"] = _setting(models, scopes, None, "normalize", int(method in _NORMALIZED), key)
    for name, (where, entries) in cols.items():
        if entries[-1][0] not in (None, "*"):
            entries.append((None, None))  # no entry matches: mergekit falls back to the parameter's default
        if any(value is None for _, value in entries):
            _refuse(where, "missing: mergekit needs it for every tensor")
    return cols


def _filters(cols: dict) -> list[str | None]:
    """The filter sequence every filtered setting shares (a one-entry setting applies to all of them)."""
    seqs = {name: [f for f, _ in entries] for name, (_, entries) in cols.items()}
    longest = max(seqs.values(), key=len, default=[None])
    for name, seq in seqs.items():
        if len(seq) > 1 and seq != longest:
            _refuse(cols[name][0], f"filters {seq[:-1]} differ from {longest[:-1]}; a Mergescope rule gives "
                                   f"every parameter of its components one setting")
    return longest


def _at(cols: dict, name: str, i: int):
    entries = cols[name][1]
    return entries[i][1] if len(entries) > 1 else entries[0][1]


def _alpha(method: str, cols: dict, i: int) -> list[float]:
    """The donor's weight at filter position i as anchors (one value: a constant)."""
    spec = MERGEKIT[method]
    if spec.weights == "t":
        return _anchors(_at(cols, "t", i), cols["t"][0])
    if spec.weights == "none":
        return [1.0]
    w_vlm, w_donor = (_anchors(_at(cols, n, i), cols[n][0]) for n in ("w_vlm", "w_donor"))
    if len(w_vlm) != len(w_donor) and 1 in (len(w_vlm), len(w_donor)):
        w_vlm, w_donor = ([w[0]] * max(len(w_vlm), len(w_donor)) if len(w) == 1 else w for w in (w_vlm, w_donor))
    if len(w_vlm) != len(w_donor):
        _refuse(cols["w_donor"][0], f"a gradient of {len(w_donor)} anchors against the VLM's {len(w_vlm)}")
    sums = [a + b for a, b in zip(w_vlm, w_donor)]
    if all(abs(s - 1) <= _TOL for s in sums):
        return [float(w) for w in w_donor]
    if not _number(_at(cols, "normalize", i), cols["normalize"][0]):
        _refuse(cols["w_donor"][0], f"weights sum to {sums[0]:g}, not 1, and normalize is off: Mergescope's "
                                    f"weights are (1 − α, α)")
    if max(sums) - min(sums) > _TOL or sums[0] <= 0:
        _refuse(cols["w_donor"][0], "the two weights' sum changes along the gradient (or is not positive); "
                                    "Mergescope's α = w_donor / (w_vlm + w_donor) would not be piecewise linear")
    return [w / sums[0] for w in w_donor]


def _params(method: str, cols: dict, i: int) -> dict:
    spec = MERGEKIT[method]
    params = {}
    def scalar(column: str):
        where, value = cols[column][0], _at(cols, column, i)
        if isinstance(value, list):
            _refuse(where, "a gradient: Mergescope's method parameters take one value per rule")
        return _number(value, where)

    for name in spec.per_model + spec.shared:
        params[name] = value = scalar(name)
        if name in spec.per_model and scalar(f"vlm:{name}") != value:
            _refuse(cols[f"vlm:{name}"][0], f"differs from the donor's {value}: Mergescope's {method} takes one "
                                            f"{name} for both models")
    return params


def _rules_of(method: str, cols: dict, filters: list) -> list[tuple[str, list[float], dict]]:
    """(component, α anchors, params) per filter position of one slice (or of the models form)."""
    where = next(iter(cols.values()), ("parameters",))[0]
    return [(_component(f, where), _alpha(method, cols, i), _params(method, cols, i)) for i, f in enumerate(filters)]


def _depth(anchors: list[float], low: int, high: int) -> list[float]:
    """mergekit's value of a gradient at each layer of slice [low, high) (t = idx/(n−1); t = 1 for one layer)."""
    n = high - low
    return [evaluate_setting(anchors, "", idx / (n - 1) if n > 1 else 1.0) for idx in range(n)]


def _curve(component: str, per_slice: list[list[float]], ranges: list[tuple[int, int]] | None,
           outside_taken: bool) -> dict:
    """The curve of one filter position; `outside_taken`: earlier rules hold every tensor outside the layers."""
    if ranges is None or len(ranges) == 1:
        anchors = per_slice[0]
        if component in _NON_LAYER.values() or len(set(anchors)) == 1:
            return {"preset": "constant", "value": anchors[0]}  # tensors outside the layers: t = 0
        return {"preset": "anchors", "values": anchors}
    alphas = [a for anchors, (low, high) in zip(per_slice, ranges) for a in _depth(anchors, low, high)]
    embed, last = per_slice[0][0], per_slice[-1][0]  # mergekit plans embeddings with slice 0, the head with the last
    if component in ("embed_tokens", "norm", "lm_head"):
        return {"preset": "constant", "value": embed if component == "embed_tokens" else last}
    if component == "all" and embed != last and not outside_taken:
        _refuse("slices", f"the first slice gives the embeddings α = {embed:g} and the last the final norm and head "
                          f"{last:g}; a Mergescope rule on all tensors gives them one α")
    curve = ({"preset": "constant", "value": alphas[0]} if len(set(alphas)) == 1
             else {"preset": "custom", "values": alphas})
    if component == "all" and embed != alphas[0] and not outside_taken:
        curve["non_layer"] = embed
    return curve


def _merge_rules(rules: list[dict]) -> list[dict]:
    """Neighbouring rules with one method, curve and params as one rule (first match wins either way)."""
    out: list[dict] = []
    for rule in rules:
        if out and all(out[-1][k] == rule[k] for k in ("method", "curve", "params")):
            out[-1]["components"] = sorted(set(out[-1]["components"]) | set(rule["components"]))
        else:
            out.append(rule)
    return out


def _keeps_vlm(method: str, anchors: list[list[float]], params: dict) -> bool:
    spec = MERGEKIT[method]
    if spec.weights != "none":
        return all(a == 0 for per_slice in anchors for a in per_slice)
    return bool(spec.keep) and all(params.get(k) == v for k, v in spec.keep)


def plan_from_mergekit(text: str) -> MergekitImport:
    """The plan a mergekit YAML configuration describes, and the models it names.

    Raises MergekitUnsupported (one line naming the key) for what a plan cannot express, LimitError or
    MergescopeError for text that is too large or not YAML; nothing else is touched."""
    config = parse_document(text, "mergekit configuration")
    if not isinstance(config, dict):
        _refuse("configuration", f"a mergekit configuration is a mapping, got {brief(config)}")
    for key in config:
        if key in _REFUSED:
            _refuse(key, f"{_REFUSED[key]} has no counterpart in a Mergescope plan (it keeps the VLM's tokenizer)")
        if key not in _IGNORED | {"merge_method", "base_model", "models", "slices", "parameters"}:
            _refuse(str(key), "not a mergekit 0.1.5 configuration key Mergescope reads")
    method = config.get("merge_method")
    if method == "passthrough":
        _refuse("merge_method", "passthrough stacks layers (a frankenmerge); Mergescope merges layer l with layer l")
    if method not in MERGEKIT:
        _refuse("merge_method", f"{brief(method)} has no Mergescope counterpart; known: {', '.join(MERGEKIT)}")
    sources, slice_scopes, ranges, key = _sources(config)
    models = sources[0]
    vlm, donor, base = _roles(config, method, models, key)
    columns = []
    for s, (entries, scope) in enumerate(zip(sources, slice_scopes)):
        where = f"slices[{s}].sources" if ranges else key
        scopes = ([(f"slices[{s}].parameters", scope)] if ranges else []) + [("parameters", config.get("parameters"))]
        _check_scopes(method, entries, scopes, where)
        columns.append(_columns(method, entries, (vlm, donor), scopes, where))
    filters = _filters({f"{s}:{name}": col for s, cols in enumerate(columns) for name, col in cols.items()})
    per_slice = [_rules_of(method, cols, filters) for cols in columns]
    if any([(c, p) for c, _, p in rules] != [(c, p) for c, _, p in per_slice[0]] for rules in per_slice):
        _refuse("slices", "the slices' filters or method parameters differ; a plan's rules hold over every layer")
    rules = []
    for i, (component, _, params) in enumerate(per_slice[0]):
        anchors = [rules_s[i][1] for rules_s in per_slice]
        if component == "all" and _keeps_vlm(method, anchors, params):
            break  # the unfiltered rest keeps the VLM: no rule, as in a plan
        taken = set(_NON_LAYER.values()) <= {r["components"][0] for r in rules}
        rules.append({"components": [component], "method": method, "curve": _curve(component, anchors, ranges, taken),
                      "params": params})
    try:
        plan = MergePlan.from_dict({"rules": _merge_rules(rules)})
    except MergescopeError as exc:
        raise MergekitUnsupported(f"the imported plan is not valid: {exc}") from None
    return MergekitImport(plan, models[vlm]["model"], models[donor]["model"], base)
