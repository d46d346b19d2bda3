"""The items a sweep cell flipped against the base VLM (issue #22): right → wrong and wrong → right
(`merging.experiments.sweep.add_flips`), listed with the image, the question, the gold answer and both
answers, for the Sweep tab's click on a cell."""

from __future__ import annotations

import base64
import html
import io

from merging.errors import MergescopeError
from merging.evals.eval_sets import EvalItem

MAX_LISTED = 24  # per direction: a page, not the whole eval set
THUMB_PX = 84


def flip_columns(row: dict) -> dict:
    """The results table's flip columns for one sweep row ("" for the baseline row)."""
    if row.get("mcnemar_p") is None:
        return {"right→wrong": "", "wrong→right": "", "McNemar p": ""}
    return {"right→wrong": len(row["right_to_wrong"]), "wrong→right": len(row["wrong_to_right"]),
            "McNemar p": f"{row['mcnemar_p']:.3g}" + (" *" if row["mcnemar_p"] < 0.05 else "")}


def _thumbnail(item: EvalItem) -> str:
    try:
        image = item.image()
    except MergescopeError:
        return "(image unreadable)"
    if image is None:
        return "(text only)"
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    return (f'<img src="data:image/png;base64,{data}" width="{THUMB_PX}" height="{THUMB_PX}" '
            'style="image-rendering: pixelated; object-fit: contain">')


def _item_rows(ids: list[str], items: dict[str, EvalItem], base: dict, cell: dict) -> tuple[str, str]:
    out = []
    for item_id in ids[:MAX_LISTED]:
        item = items.get(item_id)
        if item is None:
            continue
        out.append(f"<tr><td>{_thumbnail(item)}</td><td>{html.escape(item.question)}</td>"
                   f"<td><b>{html.escape(item.answer)}</b></td><td>{html.escape(str(base.get(item_id, '')))}</td>"
                   f"<td>{html.escape(str(cell.get(item_id, '')))}</td></tr>")
    more = f"<p>… and {len(ids) - MAX_LISTED} more (results.json lists them all)</p>" if len(ids) > MAX_LISTED else ""
    return "".join(out), more


def flips_html(rows: list[dict], index: int, items: list[EvalItem]) -> str:
    """HTML for sweep row `index`: its right → wrong and wrong → right items, each with a thumbnail, the
    question, the gold answer, the base VLM's answer and the cell's; a line saying why for the baseline
    row or a row without flips."""
    if not 0 <= index < len(rows):
        return ""
    row = rows[index]
    if row.get("mcnemar_p") is None:
        return "<p>The base VLM's row: the other cells' flips are counted against it. Click a merged cell.</p>"
    base_row = next(r for r in rows if r["alpha"] is None)
    base = {a["id"]: a["answer"] for a in base_row["answers"]}
    cell = {a["id"]: a["answer"] for a in row["answers"]}
    by_id = {item.id: item for item in items}
    parts = [f"<h3>{html.escape(row['setting'])} · {html.escape(row['method'])} · α {row['alpha']:g}: "
             f"McNemar p = {row['mcnemar_p']:.3g}</h3>"]
    for key, title in (("right_to_wrong", "right → wrong"), ("wrong_to_right", "wrong → right")):
        body, more = _item_rows(row[key], by_id, base, cell)
        parts.append(f"<h4>{title}: {len(row[key])} items</h4>")
        if body:
            parts.append('<table class="flips"><tr><th>image</th><th>question</th><th>gold</th>'
                         f"<th>base VLM</th><th>this cell</th></tr>{body}</table>{more}")
    return "".join(parts)
