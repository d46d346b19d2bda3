"""The plan as a mergekit configuration (`mergekit.yaml` in an export), where mergekit can express it.

mergekit (checked against mergekit 0.1.5): one merge method per configuration, no RegMean, no
vocabulary-size mismatch handling like ours, no "keep the VLM" for tensors outside every rule (we
give those weight 1 to the VLM and 0 to the donor, or t = 0 for slerp). Our components become
substring `filter`s (`.self_attn.`, `.mlp.`, `.q_proj.`, `.input_layernorm.`, `embed_tokens`,
`.norm.`, `lm_head`), first match wins as in our plans; a curve becomes a gradient — a constant a
scalar, `anchors` their own list (mergekit's gradient is our anchors formula), any other curve its
exact per-layer list. mergekit evaluates a gradient at x = (l/(L−1))·(L−1), which is not exactly l
for some l and L (e.g. L = 24, l = 13); the generator simulates mergekit's parameter resolution for
every tensor and, where a per-layer list would not reproduce α exactly, writes one single-layer slice
per layer with scalar values instead. Plans mergekit cannot express get a clear reason instead of a
file (`MergekitUnsupported`). How each method maps onto mergekit's (base model, weights, parameter
names) is `merging.methods.mergekit.MERGEKIT`; mergekit's weightless methods (model_stock, sce, ram,
karcher, nearswap, …) are written only where every tensor has α = 1.

Every float the file holds (α, the VLM's complement weight, density, ε, λ, …) is written rounded to
`DECIMALS` (4) decimal places — "0.9143", not "0.9142857142857143" — and parameters other than α to 4
significant digits where that keeps more (ε = 1e-8 stays 1e-8), so mergekit merges with every value
within 0.5·10⁻⁴ of the plan's; the generator's check accepts exactly that much (`decimals=None` writes the exact
values, which mergekit then reproduces bit for bit: the parity tests use it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import yaml

from merging.plan import curves
from merging.methods.mergekit import (MERGEKIT, MERGEKIT_METHODS, MergekitUnsupported, check_weightless, fallback,
    method_notes, mk_value)
from merging.plan.merge_plan import PLAN_NAME, MergePlan, Target

MERGEKIT_NAME = "mergekit.yaml"
DECIMALS = 4  # the decimal places of every float the exported file writes


def rounded(value: Any, decimals: int | None, significant: bool = True) -> Any:
    """`value` (a mergekit configuration or any part of it) with every float rounded to `decimals`
    places — with `significant`, to `decimals` significant digits where that keeps more (a small ε);
    None: unchanged. ints, bools and strings stay as they are."""
    if decimals is None:
        return value
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value) or not significant:
            return round(value, decimals) if math.isfinite(value) else value
        return round(value, max(decimals, decimals - 1 - math.floor(math.log10(abs(value)))))
    if isinstance(value, dict):
        return {k: rounded(v, decimals, significant) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, decimals, significant) for v in value]
    return value


@dataclass(frozen=True)
class _Filter:
    text: str | None  # mergekit's substring filter; None: every tensor (a rule on `all`)
    layer: bool       # matches decoder-layer tensors (else embeddings, final norm, head)


def _filters(component: str, layout, curve: dict, sliced: bool) -> list[_Filter]:
    if component == "all":
        # one unfiltered entry; mergekit evaluates it at t = 0 for the tensors outside the layers, which is
        # our α_0 unless the curve gives `non_layer` (or each slice holds one layer's scalar): then those
        # tensors get their own filters first
        explicit = "non_layer" in curve or sliced
        outside = list(dict.fromkeys(s.role for s in layout.slots if s.layer is None)) if explicit else []
        return [f for role in outside for f in _filters(role, layout, curve, sliced)] + [_Filter(None, True)]
    if component == "norms":
        return [f for role in dict.fromkeys(s.role for s in layout.slots if s.group == "norms")
                for f in _filters(role, layout, curve, sliced)]
    if component in ("embed_tokens", "lm_head"):
        return [_Filter(component, False)]
    if component == "norm":
        return [_Filter(".norm.", False)]
    return [_Filter(f".{component}.", True)]


def _layer_value(curve: dict, alphas: list[float], per_layer: bool, layer: int | None):
    """The mergekit value for a layer filter: a scalar, the anchors, or the per-layer list."""
    if layer is not None:
        return alphas[layer]
    if len(set(alphas)) == 1:
        return alphas[0]
    if curve["preset"] == "anchors" and not per_layer:
        return list(curve["values"])
    return list(alphas)


def _complement(value):
    return [1.0 - v for v in value] if isinstance(value, list) else 1.0 - value


def _setting(items: list[tuple[str | None, Any]], fallback: Any):
    """A mergekit parameter setting: [{filter, value}, ..., {value: fallback}] (first match wins), or one
    value where a single entry covers every tensor."""
    entries = []
    for flt, value in items + [(None, fallback)]:
        entries.append({"filter": flt, "value": value} if flt is not None else {"value": value})
        if flt is None:
            break  # nothing after an unfiltered entry is ever reached
    values = [e["value"] for e in entries]
    if len(entries) == 1 or (not any(isinstance(v, list) for v in values) and len(set(values)) == 1):
        return values[0]
    return entries


def _parameters(method: str, plan: MergePlan, layout, layer: int | None,
                decimals: int | None) -> tuple[dict, dict, dict]:
    """(VLM's, donor's, shared) mergekit parameters; `layer` set: scalars for that layer's slice. α is
    rounded to `decimals` places before the VLM's weight 1 − α is taken from it, so the two still sum to 1."""
    spec = MERGEKIT[method]
    L = layout.num_layers
    alpha_items: list = []
    items: dict[str, list] = {name: [] for name in spec.per_model + spec.shared}
    for rule in plan.rules:
        alphas = curves.layer_alphas(rule.curve, L)
        for component in rule.components:
            for f in _filters(component, layout, rule.curve, sliced=layer is not None):
                value = (_layer_value(rule.curve, alphas, per_layer=layer is not None, layer=layer) if f.layer
                         else curves.non_layer_alpha(rule.curve, alphas))
                alpha_items.append((f.text, rounded(value, decimals, significant=False)))
                for name in items:
                    items[name].append((f.text, mk_value(method, name, rule.params[name])))
    vlm: dict[str, Any] = {}
    donor: dict[str, Any] = {}
    shared: dict[str, Any] = {}
    if spec.weights == "t":
        shared["t"] = _setting(alpha_items, 0.0)
    elif spec.weights == "models":
        vlm["weight"] = _setting([(f, _complement(v)) for f, v in alpha_items], 1.0)
        donor["weight"] = _setting(alpha_items, 0.0)
    for name in spec.per_model:
        vlm[spec.mk(name)] = donor[spec.mk(name)] = _setting(items[name], fallback(method, name))
    for name in spec.shared:
        shared[spec.mk(name)] = _setting(items[name], fallback(method, name))
    shared.update(spec.fixed)
    return vlm, donor, shared


def _model_path(ckpt) -> str:
    path = ckpt.path if ckpt.path.is_dir() else ckpt.path.parent
    return str(path.resolve())  # absolute: mergekit takes a relative name for a hub id


def mergekit_config(plan: MergePlan, pair, decimals: int | None = DECIMALS) -> dict:
    """`plan` as a mergekit configuration (a dict) with its floats rounded to `decimals` places (None:
    exact), or MergekitUnsupported saying why it cannot be."""
    layout = pair.layout
    targets = plan.targets(layout, has_base=pair.base is not None)
    if not targets:
        raise MergekitUnsupported("the plan merges nothing (it is the base VLM); there is nothing for mergekit to do")
    if layout.vlm_only:  # mergekit pairs layer i with layer i; this VLM's layers do not line up with the donor's
        raise MergekitUnsupported(f"the VLM's decoder layers {', '.join(map(str, layout.interleaved))} have no "
                                  f"counterpart in the donor, so its layer i is not the donor's layer i, as "
                                  f"mergekit's configurations assume")
    used: dict[str, list[int]] = {}
    for i, rule in enumerate(plan.rules):
        if any(any(s.matches(c) for c in rule.components) and targets.get(s.name) is not None
               and targets[s.name].method == rule.method for s in layout.slots):
            used.setdefault(rule.method, []).append(i)
    if len(used) > 1:
        listed = ", ".join(f"{m} (rule{'s' * (len(rules) > 1)} {', '.join(map(str, rules))})"
                           for m, rules in used.items())
        raise MergekitUnsupported(f"mergekit applies one merge method per configuration; this plan mixes {listed}")
    (method,) = used
    if method not in MERGEKIT_METHODS:
        what = "RegMean" if method == "regmean" else repr(method)
        raise MergekitUnsupported(f"mergekit has no {what} merge method")
    check_weightless(method, layout, targets)
    shared_rows = [s.rel for s in layout.slots if s.shared_rows is not None and s.name in targets]
    if shared_rows:
        raise MergekitUnsupported(f"the vocabularies differ ({', '.join(shared_rows)}): Mergescope merges the shared "
                                  f"rows and keeps the VLM's extra ones, which mergekit's tokenizer handling does not")
    live_rules = used[method]
    plan = MergePlan(tuple(r for i, r in enumerate(plan.rules) if i in live_rules))  # drop unreachable rules
    vlm, donor = _model_path(pair.vlm_files), _model_path(pair.donor)
    base = _model_path(pair.base) if MERGEKIT[method].base == "common" else None
    dtype = dict(pair.vlm.named_parameters())[layout.slots[0].name].dtype
    out_dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dtype, "float32")
    head: dict[str, Any] = {"merge_method": method}
    if MERGEKIT[method].base == "vlm":
        head["base_model"] = vlm  # the VLM's entry below doubles as mergekit's base
    elif base is not None:
        head["base_model"] = base

    def models_form() -> dict:
        p_vlm, p_donor, shared = _parameters(method, plan, layout, None, decimals)
        models = [{"model": vlm, **({"parameters": p_vlm} if p_vlm else {})},
                  {"model": donor, **({"parameters": p_donor} if p_donor else {})}]
        if base is not None:
            models.append({"model": base})
        return {**head, "models": models, **({"parameters": shared} if shared else {}),
                "dtype": "float32", "out_dtype": out_dtype}

    def slices_form() -> dict:
        slices = []
        for layer in range(layout.num_layers):
            p_vlm, p_donor, shared = _parameters(method, plan, layout, layer, decimals)
            sources = [{"model": vlm, "layer_range": [layer, layer + 1], **({"parameters": p_vlm} if p_vlm else {})},
                       {"model": donor, "layer_range": [layer, layer + 1],
                        **({"parameters": p_donor} if p_donor else {})}]
            if base is not None:
                sources.append({"model": base, "layer_range": [layer, layer + 1]})
            slices.append({"sources": sources, **({"parameters": shared} if shared else {})})
        return {**head, "slices": slices, "dtype": "float32", "out_dtype": out_dtype}

    slack = 0.0 if decimals is None else 0.5 * 10.0 ** -decimals + 1e-12  # what rounding may move a value
    config = rounded(models_form(), decimals)
    if _mismatches(config, method, plan, pair, targets, slack):
        config = rounded(slices_form(), decimals)
        bad = _mismatches(config, method, plan, pair, targets, slack)
        if bad:
            raise MergekitUnsupported(f"mergekit's filters cannot reproduce this plan for {bad[0]}")
    return config


# a port of mergekit's parameter resolution (mergekit.config.evaluate_setting, ConfigReader,
# MergePlanner.plan_slice), to check the generated configuration before anyone runs it
def evaluate_setting(setting, name: str, t: float):
    """mergekit's value of a parameter `setting` for tensor `name` at depth t ∈ [0, 1] (None: no entry matches)."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, (bool, int, float)):
        return setting
    if isinstance(setting, list) and setting:
        if all(isinstance(e, (bool, int, float)) for e in setting):
            if any(isinstance(e, bool) for e in setting):
                return setting[int(t * (len(setting) - 1))]
            scaled = t * (len(setting) - 1)
            i0 = int(scaled)
            i1 = min(len(setting) - 1, i0 + 1)
            frac = scaled - i0
            return (1 - frac) * setting[i0] + frac * setting[i1]
        for cond in setting:
            flt = cond.get("filter")
            if flt is None or flt == "*" or (name and flt in name):
                return evaluate_setting(cond["value"], name, t)
    return None


def _resolve(scopes: list[dict | None], param: str, name: str, t: float):
    for scope in scopes:
        if scope and param in scope:
            value = evaluate_setting(scope[param], name, t)
            if value is not None:
                return value
    return None


def _mismatches(config: dict, method: str, plan: MergePlan, pair, targets: dict[str, Target],
                slack: float = 0.0) -> list[str]:
    layout = pair.layout
    L = layout.num_layers
    bad = []
    for slot in layout.slots:
        if "slices" in config:
            index = slot.layer if slot.layer is not None else (0 if slot.role == "embed_tokens" else -1)
            piece = config["slices"][index]
            sources, shared_scope = piece["sources"], piece.get("parameters")
            t = 1.0 if slot.layer is not None else 0.0  # a one-layer slice evaluates gradients at t = 1
        else:
            sources, shared_scope = config["models"], None
            t = (slot.layer / (L - 1) if L > 1 else 1.0) if slot.layer is not None else 0.0
        top = config.get("parameters")

        def get(param: str, model: int | None):
            scopes = ([sources[model].get("parameters")] if model is not None else []) + [shared_scope, top]
            return _resolve(scopes, param, slot.vlm_key if model != 1 else slot.donor_key, t)

        target = targets.get(slot.name)
        alpha = target.alpha if target is not None else 0.0
        spec = MERGEKIT[method]
        want: list[tuple[str, int | None, Any, float]] = []  # (param, model, value, tolerance)
        if spec.weights == "t":
            want.append(("t", None, alpha, 0.0))
        elif spec.weights == "models":
            want += [("weight", 1, alpha, 0.0), ("weight", 0, 1.0 - alpha, 1e-12)]
        for name in spec.per_model + spec.shared:
            value = (mk_value(method, name, dict(target.params)[name]) if target is not None
                     else fallback(method, name))
            want += [(spec.mk(name), m, value, 0.0) for m in ((0, 1) if name in spec.per_model else (None,))]
        for param, model, value, tol in want:
            got = get(param, model)
            if got is None or abs(float(got) - float(value)) > tol + slack:
                bad.append(f"{slot.rel} ({param}: mergekit {got}, plan {value})")
                break
    return bad


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:  # write shared values out, no YAML anchors
        return True


_Dumper.add_representer(list, lambda d, data: d.represent_sequence(
    "tag:yaml.org,2002:seq", data, flow_style=all(isinstance(e, (int, float)) for e in data)))


def mergekit_yaml(plan: MergePlan, pair, decimals: int | None = DECIMALS) -> str:
    """`mergekit_config` as commented YAML, floats to `decimals` places (None: exact); raises
    MergekitUnsupported where mergekit cannot express the plan."""
    config = mergekit_config(plan, pair, decimals)
    method = config["merge_method"]
    targets = plan.targets(pair.layout, has_base=pair.base is not None)
    partial = len(targets) < len(pair.layout.slots)
    notes = [f"mergekit configuration of Mergescope plan {plan.hash()} ({PLAN_NAME}); α = the donor's weight.",
             "Components are substring filters, first match wins; the last entry (no filter) is for tensors",
             "no rule matches, which keep the VLM."]
    if decimals is not None:
        notes.append(f"Values rounded to {decimals} decimals: the exact ones are in {PLAN_NAME}.")
    notes += method_notes(method, plan, partial)
    if "slices" in config:
        notes += ["One single-layer slice per layer: a per-layer gradient list would not reproduce every α",
                  "exactly at this depth (mergekit evaluates it at (l/(L−1))·(L−1), which is not always l)."]
    if pair.is_multimodal:
        notes += ["The VLM is a vision-language model: mergekit merges models of one architecture, so this",
                  "file documents the merge (or serves a VLM pair of the same family); `python -m merging",
                  "export` writes the merged VLM itself."]
    header = "".join(f"# {line}\n" for line in notes)
    return header + yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
