"""The per-layer α curve editor: an SVG the user draws on, as a Gradio 6 `gr.HTML` component.

Plotly figures cannot send drags back to Python, so the editor is plain SVG: one bar per decoder
layer, α on the vertical axis, its value written on it (up to 48 layers).
Dragging across the bars sets each layer under the pointer (the
layers between two pointer samples are interpolated, so a fast stroke leaves no gaps). The drawing
stays in the browser while the pointer is down and is committed once, on pointer-up, by assigning
`props.value` — which sends one `change` event to Python with the list of α values.
"""

from __future__ import annotations

import gradio as gr

WIDTH, HEIGHT = 600, 200

TEMPLATE = f"""
<div class="curve-editor" title="Drag across the bars to draw α per layer (0 = VLM, 1 = donor LLM)">
  <svg viewBox="0 0 {WIDTH} {HEIGHT}" preserveAspectRatio="none" data-layers="${{value.length}}">
    ${{[0, 0.25, 0.5, 0.75, 1].map(a => `<line class="grid" x1="0" x2="{WIDTH}" y1="${{{HEIGHT} * (1 - a)}}"
        y2="${{{HEIGHT} * (1 - a)}}"></line>`).join('')}}
    ${{value.map((a, i) => `<rect class="bar" data-layer="${{i}}" x="${{i * {WIDTH} / value.length + 1}}"
        width="${{Math.max(1, {WIDTH} / value.length - 2)}}" y="${{{HEIGHT} * (1 - a)}}"
        height="${{{HEIGHT} * a}}"></rect>`).join('')}}
    ${{value.length <= 48 ? value.map((a, i) => `<text class="value" data-layer="${{i}}"
        x="${{(i + 0.5) * {WIDTH} / value.length}}" y="${{Math.max(14, {HEIGHT} * (1 - a) - 4)}}"
        >${{a.toFixed(2)}}</text>`).join('') : ''}}
  </svg>
  <div class="axis"><span>layer 0 · VLM-side</span><span>α per layer, drag to draw</span>
    <span>layer ${{value.length - 1}}</span></div>
</div>
"""

CSS = """
.curve-editor svg { width: 100%; height: 200px; background: var(--block-background-fill);
  border: 1px solid var(--border-color-primary); border-radius: 6px; touch-action: none; cursor: crosshair; }
.curve-editor .bar { fill: var(--color-accent); opacity: 0.8; }
.curve-editor .grid { stroke: var(--border-color-primary); stroke-width: 1; }
.curve-editor .value { font-size: 13px; text-anchor: middle; fill: var(--body-text-color); pointer-events: none; }
.curve-editor .axis { display: flex; justify-content: space-between; font-size: 12px; opacity: 0.7; }
"""

JS = f"""
let drawing = false, draft = null, last = null;
const svg = () => element.querySelector('svg');
function at(ev) {{
  const box = svg().getBoundingClientRect(), n = draft.length;
  const layer = Math.min(n - 1, Math.max(0, Math.floor((ev.clientX - box.left) / box.width * n)));
  const alpha = Math.min(1, Math.max(0, 1 - (ev.clientY - box.top) / box.height));
  return [layer, Math.round(alpha * 100) / 100];
}}
function paint() {{
  svg().querySelectorAll('.bar').forEach((bar, i) => {{
    bar.setAttribute('y', {HEIGHT} * (1 - draft[i]));
    bar.setAttribute('height', {HEIGHT} * draft[i]);
  }});
  svg().querySelectorAll('.value').forEach((label, i) => {{
    label.setAttribute('y', Math.max(14, {HEIGHT} * (1 - draft[i]) - 4));
    label.textContent = draft[i].toFixed(2);
  }});
}}
function stroke(ev) {{
  const [layer, alpha] = at(ev);
  const [from, fromAlpha] = last ?? [layer, alpha];
  const steps = Math.abs(layer - from);
  for (let k = 0; k <= steps; k++) {{
    const t = steps ? k / steps : 1;
    draft[from + Math.sign(layer - from) * k] = Math.round((fromAlpha + (alpha - fromAlpha) * t) * 100) / 100;
  }}
  last = [layer, alpha];
  paint();
}}
element.addEventListener('pointerdown', ev => {{
  if (!ev.target.closest('svg')) return;
  drawing = true; draft = [...props.value]; last = null;
  svg().setPointerCapture(ev.pointerId);
  stroke(ev);
}});
element.addEventListener('pointermove', ev => {{ if (drawing) stroke(ev); }});
element.addEventListener('pointerup', ev => {{
  if (!drawing) return;
  drawing = false;
  props.value = draft;  // one commit per stroke: sends a single change event
}});
"""


def curve_editor(num_layers: int, value: list[float] | None = None, elem_id: str = "curve") -> gr.HTML:
    return gr.HTML(value=value if value is not None else [0.0] * num_layers, html_template=TEMPLATE,
                   css_template=CSS, js_on_load=JS, elem_id=elem_id, apply_default_css=False)
