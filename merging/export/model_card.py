"""The exported checkpoint's model card (README.md): YAML metadata the Hugging Face Hub indexes, then prose.

The metadata is written by `huggingface_hub.ModelCardData` itself, so the Hub reads what it wrote:
`base_model` lists both sources (the VLM first, then the donor LLM; a common base third where the plan
uses one) with `base_model_relation: merge`, which the Hub shows as a merge of those models; `tags`
[merge, mergescope, and each merge method used]; `library_name: transformers`; `pipeline_tag`
image-text-to-text for a VLM (text-generation for a text model). A source is named by its Hub id where
it came from the Hub (a folder of the HF cache, `models--owner--name/snapshots/...`), else by its local
path — the Hub cannot link those, so replace them before publishing a merge of local folders.
The body: sources with their fingerprints, the plan, its mergekit YAML (or why there is none), the
methods and α per layer, and the command that reproduces the export.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCardData

from merging.export.mergekit_config import MERGEKIT_NAME
from merging.methods import REGISTRY, get_method
from merging.plan.merge_plan import PLAN_NAME, MergePlan, Target

CARD_NAME = "README.md"
TAGS = ("merge", "mergescope")


def hub_name(path: Path) -> str:
    """The Hub id `owner/name` of a checkpoint in the HF cache (…/models--owner--name/snapshots/<sha>),
    else the path itself."""
    for part in Path(path).parts:
        if part.startswith("models--") and part.count("--") >= 2:
            return part.removeprefix("models--").replace("--", "/", 1)
    return str(path)


def card_metadata(engine, targets: dict[str, Target]) -> ModelCardData:
    """The Hub metadata of a merge of `engine`'s pair into `targets` (see the module docstring)."""
    pair = engine.pair
    sources = [pair.vlm_files.path, pair.donor.path]
    used = sorted({t.method for t in targets.values()})
    if pair.base is not None and any(get_method(m).needs_base for m in used):
        sources.append(pair.base.path)
    return ModelCardData(base_model=list(dict.fromkeys(hub_name(p) for p in sources)), base_model_relation="merge",
                         tags=[*TAGS, *(m for m in used if m not in TAGS)], library_name="transformers",
                         pipeline_tag="image-text-to-text" if pair.is_multimodal else "text-generation")


def model_card(engine, plan: MergePlan, targets: dict[str, Target], out: Path, mergekit_text: str | None,
               mergekit_reason: str | None) -> str:
    """The exported checkpoint's README.md: metadata (`card_metadata`) between `---` lines, then the sources
    (paths, fingerprints), plan, its mergekit YAML (`mergekit_text`, or `mergekit_reason` why there is
    none), methods and per-layer α."""
    pair = engine.pair
    fps = pair.fingerprints()
    layout = pair.layout
    used = sorted({t.method for t in targets.values()})
    lines = ["---", card_metadata(engine, targets).to_yaml(), "---", "",
             f"# {out.name}", "",
             f"A layer-wise merge of the vision-language model `{hub_name(pair.vlm_files.path)}` with the text LLM "
             f"`{hub_name(pair.donor.path)}`, written by Mergescope (`python -m merging export`). α is the donor's "
             f"weight (0 = the VLM). The vision tower and projector are the VLM's own.", "",
             "## Sources", "", "| role | model | fingerprint |", "|---|---|---|",
             f"| VLM | `{pair.vlm_files.path}` | `{fps['vlm']}` |",
             f"| donor LLM | `{pair.donor.path}` | `{fps['donor']}` |"]
    if pair.base is not None:
        lines.append(f"| base | `{pair.base.path}` | `{fps['base']}` |")
    for role, gram in engine.gram_files().items():
        if any(get_method(t.method).needs_grams for t in targets.values()):
            lines.append(f"| Gram statistics ({role}) | `{gram.path}` | `{gram.fingerprint()}` |")
    lines += ["", f"## Plan (hash `{plan.hash()}`, also in `{PLAN_NAME}`)", "", "```yaml",
              plan.to_yaml().rstrip() if plan.rules else "rules: []", "```", "",
              f"{len(targets)} of {layout.total} language-model tensors merged; the others keep the "
              f"VLM's values" + (f" ({len(layout.unmatched)} of them because the donor lacks them: "
                                 f"a partial donor)." if layout.unmatched else ".")]
    for note in layout.notes:
        lines.append(f"Note: {note}")
    if used:
        lines += ["", "## Methods", "", "| method | formula | parameters |", "|---|---|---|"]
        for name in used:
            m = REGISTRY[name]
            params = "; ".join(f"`{p.name}`: {p.doc}" for p in m.params) or "–"
            formula = m.formula.replace("|", "\\|")  # a literal | inside a table cell
            lines.append(f"| `{name}` | {formula} | {params} |")
        lines += ["", "## α per layer", "", _alpha_table(layout, targets)]
    lines += ["", "## mergekit", ""]
    if mergekit_text is not None:
        lines += [f"`{MERGEKIT_NAME}` expresses this plan for mergekit:", "", "```yaml", mergekit_text.rstrip(), "```"]
    else:
        lines.append(f"No `{MERGEKIT_NAME}`: {mergekit_reason}")
    lines += ["", "## Reproduce", "", "```bash",
              f"python -m merging export --vlm {pair.vlm_files.path} --llm {pair.donor.path}"
              + (f" --base {pair.base.path}" if pair.base is not None else "")
              + f" --plan {PLAN_NAME} --out {out.name}", "```", ""]
    return "\n".join(lines)


def _alpha_table(layout, targets: dict[str, Target]) -> str:
    groups = list(dict.fromkeys(s.group for s in layout.slots if s.layer is not None))
    rows = ["| layer | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]

    def cell(slots) -> str:
        values = sorted({f"{targets[s.name].method} {targets[s.name].alpha:.4g}" for s in slots if s.name in targets})
        return ", ".join(values) if values else "–"

    for layer in range(layout.num_layers):
        in_layer = [s for s in layout.slots if s.layer == layer]
        rows.append(f"| {layer} | " + " | ".join(cell([s for s in in_layer if s.group == g]) for g in groups) + " |")
    outside = [s for s in layout.slots if s.layer is None]
    for role in dict.fromkeys(s.role for s in outside):
        rows.append(f"| {role} | " + cell([s for s in outside if s.role == role]) + " |" + " |" * (len(groups) - 1))
    return "\n".join(rows)
