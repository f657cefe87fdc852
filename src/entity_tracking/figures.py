"""The book's composite figures: the paper's Figure 1 as a circuit diagram, the authors' 32 x 32
path-patching maps beside ours, and the attention rows of each group's top heads on one prompt.

Like `plots`, every figure is an Altair chart whose data travels inside the page, drawn in the
groups' fixed colours, and at most `ARTICLE_WIDTH` pixels wide so it fits the book's article column
without a scroll bar. Heads are always written ``L{layer}H{head}`` (`head_name`).

The circuit diagram is drawn from data (a discovered `circuit.Circuit`, or a paper circuit's
`paper_reference.circuit_summary`) instead of pasting the authors' picture, so the same drawing
shows the paper's LLaMA-7B circuit and whatever our path patching found in the organism, including
a group in which it found nothing.
"""

from __future__ import annotations

import html
import json
import math
import textwrap
from dataclasses import dataclass
from typing import Mapping, Sequence

import altair as alt
import pandas as pd

from . import paper_reference as R
from .circuit import GROUP_LETTERS, GROUPS, Circuit
from .plots import GROUP_COLORS, GROUP_ORDER

#: The book's article column is 688 px wide; every figure stays inside it with a little margin.
ARTICLE_WIDTH = 680

Head = tuple[int, int]

POSITION_WORDS = {"last": "last token", "query_label": "query label", "prev_query_label": "previous query label"}
GROUP_NAMES = {  # plural, as a reader says them ("the value fetchers")
    "value_fetcher": "value fetchers",
    "position_transmitter": "position transmitters",
    "position_detector": "position detectors",
    "structure_reader": "structure readers",
}
#: What each group reads and writes, in the words of the paper's Figure 1 caption.
ROLES = {
    "structure_reader": ("reads its segment (object, 'is')", "writes segment info at the label"),
    "position_detector": ("reads the earlier label (D's output)", "writes the queried box's position"),
    "position_transmitter": ("reads C's output at the query label", "writes the position at the last token"),
    "value_fetcher": ("queries with B's position", "writes the correct object"),
}
#: The token each group's heads attend to, as Figure 1 shows it.
ATTENDS_TO = {
    "value_fetcher": "the correct object",
    "position_transmitter": "the query label",
    "position_detector": "the previous query label",
    "structure_reader": "its segment's object and 'is'",
}
#: The paper's flow, left to right on the token axis: D -> C -> B -> A -> logits.
FLOW = ("structure_reader", "position_detector", "position_transmitter", "value_fetcher")
COMPOSITIONS = (
    ("structure_reader", "position_detector", "V-composition"),
    ("position_detector", "position_transmitter", "V-composition"),
    ("position_transmitter", "value_fetcher", "Q-composition"),
    ("value_fetcher", "logits", "writes the object"),
)
PAPER_MODEL_TITLES = {"llama-7b": "LLaMA-7B", "vicuna-7b": "Vicuna-7B", "goat-7b": "Goat-7B", "float-7b": "FLoat-7B"}
EMPTY_COLOR = "#9e9e9e"
NOT_MEASURED_COLOR = "#d9d9d9"


def head_name(layer: int, head: int) -> str:
    """The one way a head is written in the book: ``L14H27`` (layer 14, head 27). Explained in chapter 3."""
    return f"L{int(layer)}H{int(head)}"


def group_title(group: str) -> str:
    """'Value fetchers (A)': a group's name for a reader, with the paper's letter. Explained in chapter 3."""
    return f"{GROUP_NAMES[group].capitalize()} ({GROUP_LETTERS[group]})"


def _group_key(key: str) -> str:
    """A group given by its package name or its letter ("A") as the package name."""
    by_letter = {letter: group for group, letter in GROUP_LETTERS.items()}
    if key in GROUPS:
        return key
    if key in by_letter:
        return by_letter[key]
    if key in R._AUTHORS_GROUP:  # the authors' file names: pos_transmitter, ...
        return R._AUTHORS_GROUP[key]
    raise ValueError(f"unknown group {key!r}: use one of {list(GROUPS)} or a letter A-D")


def _layer_range(first: int | None, last: int | None) -> str:
    if first is None:
        return "no heads found"
    return f"layer {first}" if first == last else f"layers {first}–{last}"


def _count(n: int) -> str:
    return "no heads" if n == 0 else ("1 head" if n == 1 else f"{n} heads")


# --------------------------------------------------------------------------------------------------
# Rendering a chart with an element id
# --------------------------------------------------------------------------------------------------

class IdentifiedChart:
    """A chart that displays in a notebook cell as the chart's usual HTML inside
    ``<div id="...">``, so the built page (and a reader's link ``page.html#circuit-diagram``) can
    find it. The inner HTML is exactly what Altair's default renderer writes, so the book's
    vendoring of vega and its browser checks treat it like every other chart. Explained in chapter 3."""

    def __init__(self, chart: alt.TopLevelMixin, element_id: str):
        self.chart = chart
        self.element_id = element_id

    def to_html(self) -> str:
        inner = self.chart._repr_mimebundle_()["text/html"]
        return f'<div id="{html.escape(self.element_id, quote=True)}">\n{inner}\n</div>'

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        return {"text/html": self.to_html()}

    def to_dict(self) -> dict:
        return self.chart.to_dict()

    def __repr__(self) -> str:  # the text/plain beside the HTML: stable, so stored outputs compare
        return f"<chart #{self.element_id}>"


def with_element_id(chart: alt.TopLevelMixin, element_id: str) -> IdentifiedChart:
    """Display ``chart`` inside ``<div id=element_id>`` (ids must be unique within a page). Explained in chapter 3."""
    return IdentifiedChart(chart, element_id)


def circuit_diagram_html(chart: alt.TopLevelMixin, element_id: str = "circuit-diagram") -> IdentifiedChart:
    """The circuit diagram as a notebook cell shows it, findable in the page as ``#circuit-diagram``.
    Make it the cell's last expression; give a second diagram on the same page another id. Explained in chapter 3."""
    return with_element_id(chart, element_id)


# --------------------------------------------------------------------------------------------------
# Figure 1: the circuit diagram
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GroupBox:
    """One group as the diagram draws it. ``heads`` is None when only the group's size and layer
    range are known (the paper's A and C lists are not transcribed); then no head dots are drawn.
    Explained in chapter 3."""

    group: str
    heads: tuple[Head, ...] | None
    n_heads: int
    first_layer: int | None
    last_layer: int | None

    @property
    def empty(self) -> bool:
        return self.n_heads == 0

    @property
    def position(self) -> str:
        return GROUPS[self.group]

    @property
    def label(self) -> str:
        """'C · position detectors · query label · 20 heads · layers 1–13'."""
        parts = [GROUP_LETTERS[self.group], GROUP_NAMES[self.group], POSITION_WORDS[self.position]]
        parts += ["no heads found"] if self.empty else [_count(self.n_heads), _layer_range(self.first_layer,
                                                                                            self.last_layer)]
        return " · ".join(parts)


def group_boxes(circuit_or_groups) -> dict[str, GroupBox]:
    """The four groups of a `Circuit`, of a mapping group -> heads, or of a mapping group ->
    {"n_heads", "layers", "heads"} (`paper_reference.circuit_summary`); a missing group is empty.
    Explained in chapter 3."""
    groups = circuit_or_groups.groups if isinstance(circuit_or_groups, Circuit) else circuit_or_groups
    given = {_group_key(k): v for k, v in dict(groups).items()}
    return {g: _box(g, given.get(g, ())) for g in GROUP_ORDER}


def _box(group: str, value) -> GroupBox:
    if isinstance(value, Mapping):
        heads = value.get("heads")
        heads = None if heads is None else tuple((int(l), int(h)) for l, h in heads)
        n = int(value.get("n_heads", len(heads or ())))
        layers = value.get("layers") or ((min(l for l, _ in heads), max(l for l, _ in heads)) if heads else None)
        first, last = (int(layers[0]), int(layers[1])) if layers and n else (None, None)
        return GroupBox(group, heads, n, first, last)
    heads = tuple(dict.fromkeys((int(l), int(h)) for l, h in value))
    if not heads:
        return GroupBox(group, (), 0, None, None)
    layers = [l for l, _ in heads]
    return GroupBox(group, heads, len(heads), min(layers), max(layers))


@dataclass(frozen=True)
class _Layout:
    """Data coordinates of the diagram: x = lane on the token axis, y = layer, with room above the
    last layer for the logits box. Pixel sizes are fixed, so the layer unit depends on depth."""

    n_layers: int
    width: int
    height: int
    box_half: float = 0.25      # half a box's width, in lanes
    title_px: float = 16.0      # room for a box's title above its top layer
    top_px: float = 72.0        # above the last layer: box titles, the A -> logits arrow, the logits box
    logits_px: float = 22.0

    x_domain = (-0.5, 3.95)

    @property
    def layer_px(self) -> float:
        return (self.height - self.top_px) / (self.n_layers + 0.0)

    def units(self, px: float) -> float:
        return px / self.layer_px

    @property
    def y_domain(self) -> tuple[float, float]:
        return (-0.5, self.n_layers - 0.5 + self.units(self.top_px))

    @property
    def lane_px(self) -> float:
        return self.width / (self.x_domain[1] - self.x_domain[0])

    def lane(self, group: str) -> int:
        return FLOW.index(group)

    def box_span(self, box: GroupBox) -> tuple[float, float]:
        """(bottom, top) of a group's box: its layer range, or the whole depth when it is empty or
        its layers are unknown."""
        lo, hi = (0, self.n_layers - 1) if box.first_layer is None else (box.first_layer, box.last_layer)
        return lo - 0.45, hi + 0.45 + self.units(self.title_px)

    def logits_span(self) -> tuple[float, float]:
        top = self.y_domain[1] - self.units(4)
        return top - self.units(self.logits_px), top

    def angle(self, x1: float, y1: float, x2: float, y2: float) -> float:
        """Screen angle (degrees clockwise from up) of the segment, for a triangle arrow head."""
        dx, dy = (x2 - x1) * self.lane_px, (y2 - y1) * self.layer_px
        return math.degrees(math.atan2(dx, dy))

    def pull_back(self, x1: float, y1: float, x2: float, y2: float, px: float) -> tuple[float, float]:
        """The point ``px`` pixels before (x2, y2) on the segment: where the arrow head is centred."""
        dx, dy = (x2 - x1) * self.lane_px, (y2 - y1) * self.layer_px
        length = math.hypot(dx, dy) or 1.0
        return x2 - px * dx / length / self.lane_px, y2 - px * dy / length / self.layer_px


def _box_rows(boxes: Mapping[str, GroupBox], layout: _Layout, highlight: Mapping[str, Head]) -> pd.DataFrame:
    rows = []
    for group, box in boxes.items():
        lane = layout.lane(group)
        bottom, top = layout.box_span(box)
        reads, writes = ROLES[group]
        rows.append({
            "group": group, "letter": GROUP_LETTERS[group], "lane": lane, "position": box.position,
            "x": lane - layout.box_half, "x2": lane + layout.box_half, "y": bottom, "y2": top,
            "n_heads": box.n_heads, "label": box.label, "reads": reads, "writes": writes,
            "title": f"{GROUP_LETTERS[group]} · {_count(box.n_heads)}" if not box.empty else GROUP_LETTERS[group],
            "empty": box.empty, "listed": box.heads is not None,
            "note": "no heads found" if box.empty else "", "note_lines": "no heads\nfound" if box.empty else "",
            "prominent": head_name(*highlight[group]) if group in highlight else "",
        })
    return pd.DataFrame(rows)


def _dot_rows(boxes: Mapping[str, GroupBox], layout: _Layout, highlight: Mapping[str, Head]) -> pd.DataFrame:
    """One dot per head at its layer, spread across its box; a group whose list is unknown shows
    only its highlighted (Figure 1) head, at the box's centre."""
    rows = []
    for group, box in boxes.items():
        heads = list(box.heads) if box.heads is not None else ([highlight[group]] if group in highlight else [])
        by_layer: dict[int, list[Head]] = {}
        for layer, head in sorted(heads):
            by_layer.setdefault(layer, []).append((layer, head))
        room = 2 * layout.box_half - 0.08
        for layer, at_layer in by_layer.items():
            step = min(9 / layout.lane_px, room / max(len(at_layer) - 1, 1))
            start = layout.lane(group) - step * (len(at_layer) - 1) / 2
            for i, (l, h) in enumerate(at_layer):
                rows.append({"group": group, "letter": GROUP_LETTERS[group], "x": start + i * step, "y": l,
                             "head": head_name(l, h), "position": POSITION_WORDS[box.position],
                             "prominent": highlight.get(group) == (l, h)})
    return pd.DataFrame(rows, columns=["group", "letter", "x", "y", "head", "position", "prominent"])


def _arrow_rows(boxes: Mapping[str, GroupBox], layout: _Layout) -> pd.DataFrame:
    """Arrows between neighbouring boxes, at the source's middle layer where the target box spans
    it (else at the target's nearest layer); A's arrow goes up to the logits."""
    rows = []
    for source, target, words in COMPOSITIONS:
        src = boxes[source]
        s_lo, s_hi = layout.box_span(src)
        if target == "logits":
            x1 = x2 = layout.lane(source)
            y1, y2 = s_hi, layout.logits_span()[0]
            label_x, label_y, align = x1 + 0.06, (y1 + y2) / 2, "left"
        else:
            tgt = boxes[target]
            t_lo, t_hi = layout.box_span(tgt)
            x1, x2 = layout.lane(source) + layout.box_half, layout.lane(target) - layout.box_half
            y1 = (s_lo + s_hi) / 2
            y2 = min(max(y1, t_lo + 0.5), t_hi - layout.units(layout.title_px))
            label_x, label_y, align = (x1 + x2) / 2, (y1 + y2) / 2, "center"
        hx, hy = layout.pull_back(x1, y1, x2, y2, 5)
        rows.append({"source": source, "target": target, "composition": words, "x": x1, "y": y1, "x2": x2,
                     "y2": y2, "head_x": hx, "head_y": hy, "angle": layout.angle(x1, y1, x2, y2),
                     "label_x": label_x, "label_y": label_y, "align": align,
                     "dashed": src.empty or (target != "logits" and boxes[target].empty),
                     "text": f"{GROUP_LETTERS[source]} → {'logits' if target == 'logits' else GROUP_LETTERS[target]}: "
                             f"{words}"})
    return pd.DataFrame(rows)


def _card_lines(box: GroupBox, highlight: Mapping[str, Head], width: int = 24) -> str:
    """The text under a box: position, count and layers, what it reads and writes, and notes."""
    reads, writes = ROLES[box.group]
    lines = [POSITION_WORDS[box.position]]
    lines.append("no heads found" if box.empty else f"{_count(box.n_heads)} · "
                 f"{_layer_range(box.first_layer, box.last_layer)}")
    lines += textwrap.wrap(reads, width) + textwrap.wrap(writes, width)
    if box.group in highlight:
        lines.append(f"Figure 1 head: {head_name(*highlight[box.group])}")
    if box.heads is None and not box.empty:
        lines += textwrap.wrap("heads not listed: box from size and layers", width)
    return "\n".join(lines)


def _x_axis_expr() -> str:
    words = [POSITION_WORDS[GROUPS[g]] for g in FLOW]
    return f"{json.dumps(words)}[datum.value] || ''"


def circuit_diagram(circuit_or_groups, n_layers: int | None = None, title: str | None = None,
                    highlight: Mapping[str, Head] | None = None, note: str | None = None,
                    width: int = 600, height: int = 300) -> alt.VConcatChart:
    """The paper's Figure 1 as a diagram: the four groups D -> C -> B -> A as boxes along the token
    axis (structure readers at the previous query label, position detectors at the query label,
    position transmitters and value fetchers at the last token) and the depth axis (each box spans
    its group's layers, one dot per head), arrows labelled with the composition linking them, and
    under each box its head count, layer range and what it reads and writes.

    ``circuit_or_groups``: a discovered `circuit.Circuit`, a mapping group -> heads, or
    `paper_reference.circuit_summary(...)` (groups known by size and layers only get a plain box).
    An empty group is drawn as a dashed box saying "no heads found". ``highlight`` marks one head
    per group (the paper's Figure 1 heads, `paper_reference.PROMINENT_HEADS`). Show it with
    `circuit_diagram_html` so the page can find it by id. Explained in chapter 3."""
    boxes = group_boxes(circuit_or_groups)
    n_layers = n_layers or _infer_layers(circuit_or_groups, boxes)
    deepest = max((b.last_layer for b in boxes.values() if b.last_layer is not None), default=-1)
    if deepest >= n_layers:
        raise ValueError(f"a head sits in layer {deepest} but the diagram has n_layers={n_layers}")
    width = min(int(width), ARTICLE_WIDTH)
    layout = _Layout(n_layers=n_layers, width=width, height=height)
    highlight = {_group_key(g): tuple(h) for g, h in (highlight or {}).items()}
    depth = _depth_panel(boxes, layout, highlight)
    cards = _card_panel(boxes, layout, highlight)
    model = circuit_or_groups.model if isinstance(circuit_or_groups, Circuit) else "the circuit"
    subtitle = textwrap.wrap(note, 100) if note else []
    if any(b.empty for b in boxes.values()):
        missing = ", ".join(GROUP_LETTERS[g] for g, b in boxes.items() if b.empty)
        subtitle.append(f"No heads found for {missing}: drawn as a dashed box.")
    return alt.vconcat(depth, cards, spacing=4).properties(
        title=alt.TitleParams(title or f"The entity-tracking circuit of {model}: D → C → B → A",
                              subtitle=subtitle or alt.Undefined, anchor="start"))


def _infer_layers(circuit_or_groups, boxes: Mapping[str, GroupBox]) -> int:
    """Depth from a circuit's saved score maps, else one past the deepest head."""
    if isinstance(circuit_or_groups, Circuit):
        for matrix in circuit_or_groups.scores.values():
            if len(matrix):
                return len(matrix)
    deepest = [b.last_layer for b in boxes.values() if b.last_layer is not None]
    return max(deepest, default=0) + 1


def _depth_panel(boxes, layout: _Layout, highlight) -> alt.LayerChart:
    xs = alt.Scale(domain=list(layout.x_domain), nice=False, zero=False)
    ys = alt.Scale(domain=list(layout.y_domain), nice=False, zero=False)
    x = alt.X("x:Q", scale=xs,
              axis=alt.Axis(values=[0, 1, 2, 3], labelExpr=_x_axis_expr(), title="token axis (prompt position)",
                            grid=False, labelAngle=0, orient="bottom"))
    y = alt.Y("y:Q", scale=ys,
              axis=alt.Axis(values=_layer_ticks(layout.n_layers), title="layer (depth)", format="d", grid=False))
    box_data = _box_rows(boxes, layout, highlight)
    box_colors = alt.Scale(domain=list(GROUP_ORDER), range=[GROUP_COLORS[g] for g in GROUP_ORDER])
    filled = alt.Chart(box_data).transform_filter("!datum.empty").mark_rect(opacity=0.18, strokeWidth=1.5,
                                                                              cornerRadius=4).encode(
        x=x, x2="x2:Q", y=y, y2="y2:Q", color=alt.Color("group:N", scale=box_colors, legend=None),
        stroke=alt.Stroke("group:N", scale=box_colors, legend=None),
        tooltip=[alt.Tooltip("label:N", title="group"), alt.Tooltip("reads:N"), alt.Tooltip("writes:N")])
    empty = alt.Chart(box_data).transform_filter("datum.empty").mark_rect(
        fill=None, stroke=EMPTY_COLOR, strokeDash=[4, 3], strokeWidth=1.5, cornerRadius=4).encode(
        x=x, x2="x2:Q", y=y, y2="y2:Q", tooltip=[alt.Tooltip("label:N", title="group")])
    titles = alt.Chart(box_data).mark_text(baseline="top", dy=3, fontWeight="bold", fontSize=10).encode(
        x=alt.X("lane:Q", scale=xs), y=alt.Y("y2:Q", scale=ys), text="title:N",
        color=alt.condition("datum.empty", alt.value(EMPTY_COLOR), alt.Color("group:N", scale=box_colors,
                                                                             legend=None)))
    empty_note = alt.Chart(box_data).transform_filter("datum.empty").transform_calculate(
        mid="(datum.y + datum.y2) / 2").mark_text(fontSize=10, color=EMPTY_COLOR, lineBreak="\n").encode(
        x=alt.X("lane:Q", scale=xs), y=alt.Y("mid:Q", scale=ys), text="note_lines:N")
    layers = [filled, empty, titles, empty_note, *_head_layers(boxes, layout, highlight, x, y, box_colors),
              *_arrow_layers(boxes, layout, x, y, xs, ys), *_logits_layers(layout, x, y, xs, ys)]
    return alt.layer(*layers).properties(width=layout.width, height=layout.height,
                                         view=alt.ViewConfig(stroke=None))


def _layer_ticks(n_layers: int) -> list[int]:
    step = 1 if n_layers <= 16 else 4
    return list(range(0, n_layers, step))


def _head_layers(boxes, layout, highlight, x, y, colors) -> list[alt.Chart]:
    dots = _dot_rows(boxes, layout, highlight)
    if dots.empty:
        return []
    return [alt.Chart(dots).mark_point(filled=True, size=34, opacity=0.9).encode(
        x=x, y=y, color=alt.Color("group:N", scale=colors, legend=None),
        stroke=alt.condition("datum.prominent", alt.value("black"), alt.value(None)),
        strokeWidth=alt.condition("datum.prominent", alt.value(1.5), alt.value(0)),
        size=alt.condition("datum.prominent", alt.value(80), alt.value(34)),
        tooltip=[alt.Tooltip("head:N"), alt.Tooltip("letter:N", title="group"), alt.Tooltip("position:N"),
                 alt.Tooltip("prominent:N", title="Figure 1 head")])]


def _arrow_layers(boxes, layout, x, y, xs, ys) -> list[alt.Chart]:
    arrows = _arrow_rows(boxes, layout)
    base = alt.Chart(arrows)
    colour = alt.condition("datum.dashed", alt.value(EMPTY_COLOR), alt.value("#c0392b"))  # the paper's red arrows
    line = base.mark_rule(strokeWidth=2).encode(
        x=x, y=y, x2="x2:Q", y2="y2:Q", color=colour,
        strokeDash=alt.condition("datum.dashed", alt.value([4, 3]), alt.value([1, 0])),
        tooltip=[alt.Tooltip("text:N", title="arrow")])
    head = base.mark_point(shape="triangle-up", filled=True, size=70, opacity=1).encode(
        x=alt.X("head_x:Q", scale=xs), y=alt.Y("head_y:Q", scale=ys),
        angle=alt.Angle("angle:Q", scale=None), color=colour)
    text = [base.transform_filter(f"datum.align == '{align}'").mark_text(
        fontSize=9, fontStyle="italic", align=align, dy=dy, color="#c0392b").encode(
        x=alt.X("label_x:Q", scale=xs), y=alt.Y("label_y:Q", scale=ys), text="composition:N")
        for align, dy in (("center", -9), ("left", 0))]
    return [line, head, *text]


def _logits_layers(layout, x, y, xs, ys) -> list[alt.Chart]:
    lo, hi = layout.logits_span()
    lane = layout.lane("value_fetcher")
    data = pd.DataFrame([{"x": lane - layout.box_half, "x2": lane + layout.box_half, "y": lo, "y2": hi,
                          "lane": lane, "mid": (lo + hi) / 2, "text": "logits"}])
    box = alt.Chart(data).mark_rect(fill="white", stroke="#333333", cornerRadius=4).encode(
        x=x, x2="x2:Q", y=y, y2="y2:Q")
    word = alt.Chart(data).mark_text(fontSize=11).encode(
        x=alt.X("lane:Q", scale=xs), y=alt.Y("mid:Q", scale=ys), text="text:N")
    return [box, word]


def _card_panel(boxes, layout: _Layout, highlight) -> alt.LayerChart:
    """The text under each box (one column per lane), so the depth panel stays uncluttered."""
    data = pd.DataFrame([{"group": g, "lane": layout.lane(g), "heading": f"{GROUP_LETTERS[g]} · {GROUP_NAMES[g]}",
                          "body": _card_lines(b, highlight), "label": b.label, "empty": b.empty}
                         for g, b in boxes.items()])
    n_lines = max(body.count("\n") + 1 for body in data["body"])
    x = alt.X("lane:Q", scale=alt.Scale(domain=list(layout.x_domain), nice=False, zero=False), axis=None)
    colors = alt.Scale(domain=list(GROUP_ORDER), range=[GROUP_COLORS[g] for g in GROUP_ORDER])
    heading = alt.Chart(data).mark_text(baseline="top", fontWeight="bold", fontSize=11, y=4).encode(
        x=x, text="heading:N", color=alt.condition("datum.empty", alt.value(EMPTY_COLOR),
                                                   alt.Color("group:N", scale=colors, legend=None)))
    body = alt.Chart(data).mark_text(baseline="top", fontSize=10, lineBreak="\n", y=20, color="#333333").encode(
        x=x, text="body:N", tooltip=[alt.Tooltip("label:N", title="group")])
    return alt.layer(heading, body).properties(width=layout.width, height=24 + 13 * n_lines,
                                               view=alt.ViewConfig(stroke=None))


def paper_circuit_diagram(circuit: str = "llama-7b", title: str | None = None) -> alt.VConcatChart:
    """The paper's own circuit (LLaMA-7B's 72 nodes by default) drawn as `circuit_diagram` draws
    ours, with Figure 1's prominent head of each group marked. Groups whose head list is not
    transcribed (LLaMA's A and C) are drawn from their size and layer range, and the figure says so.
    Explained in chapter 3."""
    summary = R.circuit_summary(circuit)
    unlisted = [GROUP_LETTERS[g] for g, info in summary.items() if info["heads"] is None]
    note = None
    if unlisted:
        which = unlisted[0] if len(unlisted) == 1 else f"{', '.join(unlisted[:-1])} and {unlisted[-1]}"
        note = (f"{which}: head lists not transcribed here (they are in the authors' "
                f"{circuit.removesuffix('-7b')}_circuit.json), so those boxes show size and layer range only.")
    highlight = R.PROMINENT_HEADS if circuit == "llama-7b" else None
    name = PAPER_MODEL_TITLES.get(circuit, circuit)
    size = R.CIRCUIT_SIZES[circuit]
    default = (f"The paper's {name} circuit ({size['total']} nodes, {size['unique']} distinct heads): "
               "D → C → B → A")
    return circuit_diagram(summary, 32, title=title or default,
                           highlight=highlight, note=note)


# --------------------------------------------------------------------------------------------------
# The paper's 32 x 32 score maps beside ours
# --------------------------------------------------------------------------------------------------

def _matrix_frame(matrix) -> pd.DataFrame:
    """A [layer][head] tensor, array or nested list as rows (layer, head, score); NaN/inf -> None."""
    import numpy as np

    array = matrix.detach().float().cpu().numpy() if hasattr(matrix, "detach") else np.asarray(matrix, dtype=float)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"a score map must be a non-empty [layer, head] matrix; got shape {array.shape}")
    rows = []
    for layer in range(array.shape[0]):
        for head in range(array.shape[1]):
            value = float(array[layer, head])
            ok = math.isfinite(value)
            rows.append({"layer": layer, "head": head, "head_name": head_name(layer, head),
                         "score": round(value, 5) if ok else None,
                         "score_text": f"{value:+.3f}".replace("-", "−") if ok else "not measured"})
    return pd.DataFrame(rows)


def _symmetric_domain(*frames: pd.DataFrame) -> list[float]:
    """[-m, m] with m the largest |score| of the step, so 0 is white in both maps; [-1, 1] when
    every score is 0 (an all-zero map still draws, as white cells in a grey grid)."""
    values = [abs(v) for f in frames for v in f["score"] if v is not None and not pd.isna(v)]
    m = max(values, default=0.0)
    m = m if m > 0 else 1.0
    return [-round(m, 5), round(m, 5)]


#: The shared scale of a step is symmetric-log around 0, linear within ±0.02: the paper's 32 x 32 maps
#: (scores of a few hundredths) stay visible beside an organism head that moves the score by 0.9.
SCORE_SYMLOG_CONSTANT = 0.02


def _score_map(frame: pd.DataFrame, title: list[str], domain: list[float], cell: float,
               legend_title: str, subtitle: str | None = None) -> alt.LayerChart:
    n_layers, n_heads = int(frame["layer"].max()) + 1, int(frame["head"].max()) + 1
    x = alt.X("head:O", title="head", axis=alt.Axis(labelAngle=0, values=_axis_ticks(n_heads)))
    y = alt.Y("layer:O", title="layer", sort="ascending", axis=alt.Axis(values=_axis_ticks(n_layers)))
    tooltip = [alt.Tooltip("head_name:N", title="head"), alt.Tooltip("score_text:N", title="score")]
    base = alt.Chart(frame).encode(x=x, y=y, tooltip=tooltip)
    missing = base.mark_rect(color=NOT_MEASURED_COLOR).transform_filter("!isValid(datum.score)")
    cells = base.mark_rect(stroke="#eeeeee", strokeWidth=0.3 if cell < 12 else 1).transform_filter(
        "isValid(datum.score)").encode(
        color=alt.Color("score:Q", title=legend_title,
                        scale=alt.Scale(type="symlog", constant=SCORE_SYMLOG_CONSTANT, scheme="redblue",
                                        domain=domain)))
    return alt.layer(missing, cells).properties(
        width=round(cell * n_heads), height=round(cell * n_layers),
        title=alt.TitleParams(title, subtitle=subtitle or alt.Undefined, fontSize=12, anchor="start"))


def _axis_ticks(n: int) -> list[int]:
    return list(range(0, n, 1 if n <= 16 else 4))


def _placeholder(title: list[str], width: int, height: int, text: str) -> alt.LayerChart:
    """A grey panel where a map is missing, so the step's row keeps its shape."""
    data = pd.DataFrame([{"text": text}])
    box = alt.Chart(data).mark_rect(color=NOT_MEASURED_COLOR, opacity=0.5).encode(
        x=alt.value(0), x2=alt.value(width), y=alt.value(0), y2=alt.value(height))
    word = alt.Chart(data).mark_text(fontSize=11, color="#555555").encode(
        x=alt.value(width / 2), y=alt.value(height / 2), text="text:N")
    return alt.layer(box, word).properties(width=width, height=height,
                                           title=alt.TitleParams(title, fontSize=12, anchor="start"))


def score_maps_beside_paper(ours, model_label: str, paper_model: str = "llama-7b",
                            paper_width: int = 288, spacing: int = 24) -> alt.VConcatChart:
    """For each search step (A, B, C, D: one row each), the authors' 32 x 32 path-patching map of
    ``paper_model`` beside ours, both on ONE diverging colour scale per step, symmetric around 0 (and logarithmic beyond ±0.02)
    (red = the head lowers the correct answer's probability when patched, the heads the search
    keeps). Sharing the scale makes "our best head moves the score as much as the paper's" a thing
    a reader can see; each step gets its own because step 1's scores are 4x smaller than step 2's.

    ``ours``: mapping group (name or letter) -> [layer][head] tensor or list, or a `Circuit` (its
    ``scores``). A missing map is a grey "not measured" panel; an all-zero one draws as white cells.
    Explained in chapter 3."""
    ours = ours.scores if isinstance(ours, Circuit) else ours
    ours = {_group_key(k): v for k, v in (ours or {}).items()}
    paper = R.path_patching_score_maps(paper_model)
    paper_name = PAPER_MODEL_TITLES.get(paper_model, paper_model)
    ours_frames = {g: _matrix_frame(m) for g, m in ours.items() if m is not None and len(m)}
    ours_cell = _ours_cell(ours_frames, paper_width)
    rows = []
    for group in GROUP_ORDER:
        paper_frame = _matrix_frame(paper[group])
        frame = ours_frames.get(group)
        domain = _symmetric_domain(paper_frame, *([frame] if frame is not None else []))
        legend = f"score, step {GROUP_LETTERS[group]}"
        left = _score_map(paper_frame, [group_title(group), f"paper, {paper_name}"], domain,
                          paper_width / 32, legend)
        if frame is None:
            w, h = _ours_size(ours_frames, ours_cell)
            right = _placeholder([group_title(group), f"ours, {model_label}"], w, h, "not measured")
        else:
            right = _score_map(frame, [group_title(group), f"ours, {model_label}"], domain, ours_cell, legend,
                               subtitle=_flat_note(frame))
        rows.append(alt.hconcat(left, right, spacing=spacing).resolve_scale(color="shared"))
    return alt.vconcat(*rows, spacing=18).resolve_scale(color="independent").properties(
        title=alt.TitleParams(f"Path-patching scores per step: the paper's {paper_name} beside {model_label}",
                              subtitle=["One colour scale per step, symmetric around 0, logarithmic beyond ±0.02.",
                                        "Red: patching the head lowers the correct object's probability.",
                                        "Paper maps: github.com/Nix07/finetuning at 379765d, "
                                        "experiment_1/results/path_patching/."],
                              anchor="start"))


def _flat_note(frame: pd.DataFrame) -> str | None:
    """A line under a map that would otherwise look blank: nothing measured, or every score 0."""
    valid = [v for v in frame["score"] if v is not None and not pd.isna(v)]
    if not valid:
        return "not measured (grey)"
    return "every score is 0" if all(v == 0 for v in valid) else None


def _ours_cell(frames: Mapping[str, pd.DataFrame], paper_width: int) -> float:
    """Cell size for our maps: big for a 3 x 4 organism, never wider or taller than the paper's map."""
    if not frames:
        return 24.0
    side = max(max(int(f["layer"].max()) + 1, int(f["head"].max()) + 1) for f in frames.values())
    return float(min(36, paper_width * 0.6 / side))


def _ours_size(frames: Mapping[str, pd.DataFrame], cell: float) -> tuple[int, int]:
    for f in frames.values():
        return round(cell * (int(f["head"].max()) + 1)), round(cell * (int(f["layer"].max()) + 1))
    return 120, 90


# --------------------------------------------------------------------------------------------------
# Attention of each group's top heads on one prompt
# --------------------------------------------------------------------------------------------------

def _top_heads(heads_by_group, per_group: int) -> dict[str, list[Head]]:
    """Each group's first heads; for a `Circuit` with score maps, its most negative-scoring ones."""
    if isinstance(heads_by_group, Circuit):
        out = {}
        for group, heads in heads_by_group.groups.items():
            scores = heads_by_group.scores.get(group)
            if scores:
                heads = sorted(heads, key=lambda h: scores[h[0]][h[1]])
            out[group] = list(heads)[:per_group]
        return out
    return {_group_key(g): [tuple(map(int, h)) for h in heads][:per_group] for g, heads in heads_by_group.items()}


def _token_texts(tokenizer, ids: Sequence[int]) -> list[str]:
    """Tokens as a reader reads them: no word-start marker, so '▁Box' is 'Box'."""
    pieces = tokenizer.convert_ids_to_tokens(list(ids))
    return [p.lstrip("▁Ġ") or p for p in pieces]


def paper_targets(batch, index: int, group: str, tokens: Sequence[str]) -> list[int]:
    """Token indices the paper says a group's heads attend to in prompt ``index`` (Figure 1):
    A the correct object, B the query label, C the previous query label, D its segment's object
    and the 'is' after it. Explained in chapter 3."""
    example = batch.examples[index]
    pos = {k: v[index] for k, v in batch.positions.items()}
    if group == "position_transmitter":
        return [int(pos["query_label"])]
    if group == "position_detector":
        return [int(pos["prev_query_label"])] if int(pos["prev_query_label"]) >= 0 else []
    if example.query_label not in example.labels:
        return []
    obj = int(pos["object"][example.labels.index(example.query_label)])
    if group == "value_fetcher":
        return [obj]
    after = obj + 1
    return [obj, after] if after < len(tokens) and tokens[after].lower() == "is" else [obj]


def attention_frame(lm, batch, heads_by_group, index: int = 0, per_group: int = 2) -> pd.DataFrame:
    """Attention weights (``blocks.{l}.attn.hook_pattern``) of each group's top heads on prompt
    ``index``, read at the group's own position: one row per (head, key token), weights rounded to
    3 decimals (the stored numbers notebooks compare), ``paper_target`` marking the token the paper
    says the group attends to, ``attendable`` False for tokens after the query (causal mask). Explained in chapter 3."""
    import torch

    from .patching import cache_activations, pattern_name

    chosen = {g: h for g, h in _top_heads(heads_by_group, per_group).items() if h}
    layers = sorted({l for heads in chosen.values() for l, _ in heads})
    one = batch[index]
    with torch.no_grad():
        _, store = cache_activations(lm.model, one.tokens, [pattern_name(l) for l in layers])
    tokens = _token_texts(lm.tokenizer, one.tokens[0].tolist())
    rows = []
    for group in GROUP_ORDER:
        query = int(batch.positions[GROUPS[group]][index])
        if group not in chosen or query < 0:
            continue
        targets = set(paper_targets(batch, index, group, tokens))
        for layer, head in chosen[group]:
            weights = store[pattern_name(layer)][0, head, query].float().cpu().tolist()
            rows += [_attention_row(group, layer, head, query, key, tokens[key], w, key in targets)
                     for key, w in enumerate(weights)]
    return pd.DataFrame(rows, columns=["group", "letter", "layer", "head", "head_name", "row", "position",
                                       "query_pos", "key_pos", "token", "weight", "paper_target", "attendable"])


def _attention_row(group, layer, head, query, key, token, weight, target) -> dict:
    where = POSITION_WORDS[GROUPS[group]]
    return {"group": group, "letter": GROUP_LETTERS[group], "layer": layer, "head": head,
            "head_name": head_name(layer, head), "row": f"{GROUP_LETTERS[group]} · {head_name(layer, head)} at the {where}",
            "position": GROUPS[group], "query_pos": query, "key_pos": key, "token": token,
            "weight": round(float(weight), 3), "paper_target": bool(target), "attendable": key <= query}


def attention_view(lm, batch, heads_by_group, index: int = 0, per_group: int = 2,
                   width: int = 560) -> tuple[alt.VConcatChart, pd.DataFrame]:
    """Where each group's top heads look on one prompt, as the rows of the paper's Figure 1: per
    group, one row per head at the group's position (A and B at the last token, C at the query
    label, D at the previous query label), the prompt's tokens along x, the weight as colour, and
    the token the paper says the group attends to outlined in black. Tokens after the query
    position are grey: the causal mask hides them.

    Returns the chart and its tidy frame (`attention_frame`), which is what a notebook's stored
    output should show for comparison. Explained in chapter 3."""
    frame = attention_frame(lm, batch, heads_by_group, index, per_group)
    tokens = _token_texts(lm.tokenizer, batch.tokens[index].tolist())
    width = min(int(width), ARTICLE_WIDTH - 90)  # room for the head labels on the left
    panels = [_attention_panel(frame[frame["group"] == g], g, tokens, width)
              for g in GROUP_ORDER if (frame["group"] == g).any()]
    empty = [GROUP_LETTERS[g] for g in GROUP_ORDER if not (frame["group"] == g).any()]
    subtitle = textwrap.wrap(f"Prompt {index}: {batch.examples[index].prompt}", 100)
    subtitle.append("Outlined: the token the paper says the group attends to; grey: after the head's position.")
    if empty:
        subtitle.append(f"No heads to show for {', '.join(empty)}.")
    if not panels:
        panels = [_placeholder(["No heads to show"], width, 60, "no heads found")]
    chart = alt.vconcat(*panels, spacing=12).resolve_scale(color="shared").properties(
        title=alt.TitleParams("Where each group's top heads look, on one prompt", subtitle=subtitle, anchor="start"))
    return chart, frame


def _attention_panel(frame: pd.DataFrame, group: str, tokens: Sequence[str], width: int) -> alt.LayerChart:
    where = POSITION_WORDS[GROUPS[group]]
    letter = GROUP_LETTERS[group]
    heads = list(dict.fromkeys(frame["head_name"]))
    x = alt.X("key_pos:O", title=None, sort="ascending",
              axis=alt.Axis(labelExpr=f"{json.dumps(list(tokens))}[datum.value]", labelAngle=-90,
                            labelFontSize=9 if len(tokens) <= 64 else 7))
    y = alt.Y("head_name:N", title=None, sort=heads, axis=alt.Axis(labelExpr=f"'{letter} · ' + datum.value"))
    tooltip = [alt.Tooltip("row:N", title="head"), alt.Tooltip("token:N"), alt.Tooltip("key_pos:O", title="token index"),
               alt.Tooltip("weight:Q", format=".3f")]
    base = alt.Chart(frame).encode(x=x, y=y, tooltip=tooltip)
    cells = base.mark_rect().encode(color=alt.condition(
        "datum.attendable", alt.Color("weight:Q", title="attention weight",
                                      scale=alt.Scale(domain=[0, 1], range=["#ffffff", "#08519c"]),
                                      legend=alt.Legend(orient="bottom", direction="horizontal")),
        alt.value("#eeeeee")))
    outline = base.mark_rect(fill=None, stroke="black", strokeWidth=2).transform_filter("datum.paper_target")
    title = f"{letter} · {GROUP_NAMES[group]} at the {where}: the paper's heads attend to {ATTENDS_TO[group]}"
    return alt.layer(cells, outline).properties(width=width, height=16 * len(heads),
                                                title=alt.TitleParams(title, fontSize=11, anchor="start"))
