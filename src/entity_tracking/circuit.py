"""The entity-tracking circuit as data: four head groups, each read at its own named position.

Found by path patching (`path_patching`), evaluated by `circuit_eval`, reused by DCM, CMAP and the
later chapters, and saved as JSON so a chapter can reload what an earlier one found. A circuit node
is a (layer, head, position) triple: a head can sit in several groups at different positions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .patching import Node

#: The paper's four groups in the order path patching finds them, with the position each is read at.
GROUPS: dict[str, str] = {
    "value_fetcher": "last",               # A: attends from the last token to the correct object
    "position_transmitter": "last",        # B: carries the query's position to the last token
    "position_detector": "query_label",    # C: at the query label, finds its earlier occurrence
    "structure_reader": "prev_query_label",  # D: at that occurrence, reads its segment
}
GROUP_LETTERS = {"value_fetcher": "A", "position_transmitter": "B", "position_detector": "C", "structure_reader": "D"}
GROUP_TITLES = {
    "value_fetcher": "Value fetcher (A)",
    "position_transmitter": "Position transmitter (B)",
    "position_detector": "Position detector (C)",
    "structure_reader": "Structure reader (D)",
}

Head = tuple[int, int]


@dataclass
class Circuit:
    """Heads per group plus how they were found (model, parameters, scores), for saving and reuse.
    Explained in chapter 3."""

    model: str
    groups: dict[str, list[Head]]
    params: dict = field(default_factory=dict)
    scores: dict[str, list[list[float]]] = field(default_factory=dict)  # group -> [layer][head] score map
    notes: str = ""

    def __post_init__(self):
        unknown = set(self.groups) - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown circuit groups {sorted(unknown)}; expected {list(GROUPS)}")
        self.groups = {g: [tuple(map(int, h)) for h in self.groups.get(g, [])] for g in GROUPS}

    def nodes(self, groups=None) -> list[Node]:
        """(layer, head, position) of every head of the chosen groups."""
        groups = GROUPS if groups is None else groups
        return [(layer, head, GROUPS[g]) for g in groups for layer, head in self.groups[g]]

    def sizes(self) -> dict[str, int]:
        return {g: len(h) for g, h in self.groups.items()}

    def __len__(self) -> int:
        return sum(self.sizes().values())

    def unique_heads(self) -> set[Head]:
        return {h for heads in self.groups.values() for h in heads}

    def to_json(self) -> str:
        data = asdict(self)
        data["groups"] = {g: [list(h) for h in heads] for g, heads in self.groups.items()}
        return json.dumps(data, indent=1)

    def save(self, path: str | Path) -> Path:
        """Write atomically: a half-written circuit file would poison every later chapter."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Circuit":
        data = json.loads(Path(path).read_text())
        return cls(**data)


def overlap(a: Circuit, b: Circuit) -> dict[str, dict[str, float]]:
    """Per group: sizes, shared heads, and the fraction of each circuit's heads found in the other.
    Explained in chapter 3."""
    out = {}
    for g in [*GROUPS, "all"]:
        ha = set(a.nodes()) if g == "all" else set(a.nodes([g]))
        hb = set(b.nodes()) if g == "all" else set(b.nodes([g]))
        shared = len(ha & hb)
        out[g] = {
            a.model: len(ha), b.model: len(hb), "shared": shared,
            f"frac_{a.model}_in_{b.model}": shared / len(ha) if ha else 0.0,
            f"frac_{b.model}_in_{a.model}": shared / len(hb) if hb else 0.0,
        }
    return out
