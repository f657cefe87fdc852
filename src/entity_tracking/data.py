"""The boxes entity-tracking task of the paper (its section 2), and every counterfactual it patches with.

A prompt is a context of ``n`` segments and a query, fed without the answer::

    The apple is in Box F, the computer is in Box Q, ... the map is in Box D. Box Q contains the
    -> " computer"

Prompts are built as text together with the character spans of every named element (each object,
each box label, the query label), and token positions are found from the tokenizer's offsets. So the
same code serves LLaMA's SentencePiece tokenizer and the organism's word-level one, any number of
boxes, and the appendix's rephrased prompts; nothing is a hard-coded index as in the authors' code
(their ``range(6, 49, 7)``, ``[-3]``, ``label - 4``).

Two of the authors' data bugs can be switched on with ``authors_compat=True`` so the book can measure
what each one changed:

* **B1** the base query position was read from the query sentence, so it was always 0: "source query
  position differs from the base's" only ever excluded position 0.
* **B2** the box-label-value target was encoded from a *list* of strings, which returns the id of the
  piece without the word-start marker (or ``<unk>``): a token the model never predicts.
"""

from __future__ import annotations

import functools
import random
import string
import weakref
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import torch

# Nouns in the spirit of the authors' `data/objects.csv` (common, concrete, one word each). A model
# uses the subset that its tokenizer encodes as single tokens (`single_token_words`).
OBJECTS: tuple[str, ...] = (
    "apple", "bag", "ball", "banana", "bell", "bike", "boat", "book", "bottle", "bread",
    "brush", "cake", "camera", "candle", "car", "card", "chair", "clock", "coat", "coin",
    "computer", "cookie", "cross", "crown", "cup", "desk", "dish", "document", "doll", "dress",
    "drum", "egg", "engine", "fan", "file", "fish", "flag", "flower", "fork", "game",
    "glass", "guitar", "hat", "horse", "key", "knife", "lamp", "letter", "magnet", "map",
    "medal", "milk", "mirror", "money", "note", "paper", "pen", "phone", "piano", "picture",
    "pillow", "plane", "plate", "radio", "ring", "rock", "rope", "seed", "shirt", "shoe",
    "sign", "spoon", "stamp", "stone", "table", "ticket", "tie", "toy", "train", "tree",
    "wallet", "watch", "wheel", "wire",
)
LABELS: tuple[str, ...] = tuple(string.ascii_uppercase)

MIN_BOXES = 1
MAX_BOXES = len(LABELS)
PAPER_BOXES = 7

#: Named single positions every example has (per example index into its token sequence).
POSITION_NAMES = ("last", "query_label", "prev_query_label")


def check_n_boxes(n_boxes: int, n_objects: int = len(OBJECTS), n_labels: int = len(LABELS)) -> int:
    """Refuse a number of boxes the vocabulary cannot fill with distinct objects and labels. Explained in chapter 2."""
    upper = min(MAX_BOXES, n_objects, n_labels)
    if not isinstance(n_boxes, int) or isinstance(n_boxes, bool) or not MIN_BOXES <= n_boxes <= upper:
        raise ValueError(
            f"n_boxes must be an integer from {MIN_BOXES} to {upper} (each box needs its own object and "
            f"single-letter label; the paper uses {PAPER_BOXES}); got {n_boxes!r}"
        )
    return n_boxes


# --------------------------------------------------------------------------------------------------
# Prompt styles: the paper's format and the appendix's rephrasings of the source prompt
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PromptStyle:
    """How a context is written. The default is the paper's format; the other fields express the
    appendix's "additional desiderata", each of which rewrites the source prompt in one way. Explained in chapter 2."""

    segment: str = "the {object} is in Box {label}"
    query_segment: str | None = None          # template for the queried segment only
    separator: str = ", "
    prefix: str = ""                          # text before the first segment
    context_suffix: str = ""                  # text after the last segment, before the "."
    before_query_segment: str = ""            # inserted right before the queried segment
    extra_start: tuple[tuple[str, str], ...] = ()   # extra (object, label) segments before the context
    extra_end: tuple[tuple[str, str], ...] = ()     # extra (object, label) segments after it
    query: str = "Box {label} contains the"


PAPER_STYLE = PromptStyle()


@dataclass(frozen=True)
class Example:
    """One prompt of the task. ``query_label`` differs from ``labels[query_index]`` only in the
    corrupted prompts of path patching and mean ablation, whose query letter is replaced. Explained in chapter 2."""

    objects: tuple[str, ...]
    labels: tuple[str, ...]
    query_index: int
    context_id: int = 0
    query_label: str = ""
    style: PromptStyle = PAPER_STYLE

    def __post_init__(self):
        if not self.query_label:
            object.__setattr__(self, "query_label", self.labels[self.query_index])

    @property
    def n_boxes(self) -> int:
        return len(self.objects)

    @property
    def answer(self) -> str | None:
        """The object in the queried box, or None when the query label names no box."""
        if self.query_label not in self.labels:
            return None
        return self.objects[self.labels.index(self.query_label)]

    @property
    def prompt(self) -> str:
        return render(self).text

    def with_query_label(self, letter: str) -> "Example":
        return replace(self, query_label=letter)

    def with_style(self, style: PromptStyle) -> "Example":
        return replace(self, style=style)


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt's text with the character span of every named word. Explained in chapter 2."""
    text: str
    spans: dict[str, tuple[int, int]]  # name -> character span [start, end) of a named word


def _capitalise_first(text: str) -> str:
    return text[:1].upper() + text[1:]


@functools.lru_cache(maxsize=65536)  # the same prompt is rendered for every desideratum, draw and batch
def render(example: Example) -> RenderedPrompt:
    """Write the prompt and remember where each named word sits (objects, labels, query label).
    Explained in chapter 2."""
    style = example.style
    parts: list[str] = []
    spans: dict[str, tuple[int, int]] = {}
    length = 0

    def add(text: str, name: str | None = None):
        nonlocal length
        if name is not None:
            spans[name] = (length, length + len(text))
        parts.append(text)
        length += len(text)

    def add_template(template: str, names: dict[str, tuple[str, str]]):
        """Add a template such as "the {object} is in Box {label}", naming the filled words."""
        rest = template
        while "{" in rest:
            head, _, tail = rest.partition("{")
            key, _, rest = tail.partition("}")
            add(head)
            value, name = names[key]
            add(value, name)
        add(rest)

    at_sentence_start = True

    def add_segment(template: str, obj: str, label: str, obj_name, label_name):
        nonlocal at_sentence_start
        if at_sentence_start:
            template = _capitalise_first(template)
            at_sentence_start = False
        add_template(template, {"object": (obj, obj_name), "label": (label, label_name)})

    if style.prefix:
        add(style.prefix)
        at_sentence_start = style.prefix.rstrip().endswith(".")
    segments: list[tuple[str, str, str | None, str | None, str]] = []
    for obj, label in style.extra_start:
        segments.append((obj, label, None, None, style.segment))
    for i, (obj, label) in enumerate(zip(example.objects, example.labels)):
        template = style.segment
        if i == example.query_index and style.query_segment is not None:
            template = style.query_segment
        segments.append((obj, label, f"object_{i}", f"label_{i}", template))
    for obj, label in style.extra_end:
        segments.append((obj, label, None, None, style.segment))

    first_context = len(style.extra_start)
    for k, (obj, label, obj_name, label_name, template) in enumerate(segments):
        if k > 0:
            add(style.separator)
        if k - first_context == example.query_index and style.before_query_segment:
            before = style.before_query_segment
            if at_sentence_start:
                before = _capitalise_first(before)
                at_sentence_start = False
            add(before)
        add_segment(template, obj, label, obj_name, label_name)
    add(style.context_suffix)
    add(". ")
    q_head, _, q_tail = style.query.partition("{label}")
    add(q_head)
    add(example.query_label, "query_label")
    add(q_tail)
    return RenderedPrompt("".join(parts), spans)


# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskConfig:
    """Which prompts an experiment runs on, in every method's configuration: ``n_samples`` lines of the
    dataset of ``n_boxes`` boxes drawn with ``dataset_seed``, and whether the authors' data bugs are
    reproduced (``authors_compat``, B1/B2 and the letter rules). Every other random
    draw of a method (pairings, random circuits, DCM) has its own named seed in that method's config.
    Explained in chapter 2."""

    n_boxes: int = PAPER_BOXES       # boxes per prompt                                  (paper: 7)
    n_samples: int = 500             # the dataset's first lines                          (paper: 500)
    dataset_seed: int = 0            # seed of `make_dataset`; the book's chapters all use 0
    authors_compat: bool = False     # the authors' data rules (bugs B1/B2, letters that may name a box)

    def __post_init__(self):
        check_n_boxes(self.n_boxes)
        if not isinstance(self.n_samples, int) or self.n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer; got {self.n_samples!r}")

    def examples(self, objects: Sequence[str] = OBJECTS, n_samples: int | None = None) -> list["Example"]:
        """The prompts: the dataset's first ``n_samples`` lines (default: this config's)."""
        return make_dataset(self.n_boxes, n_samples or self.n_samples, self.dataset_seed, objects=objects)


def make_dataset(
    n_boxes: int = PAPER_BOXES,
    n_samples: int = 500,
    seed: int = 0,
    objects: Sequence[str] = OBJECTS,
    labels: Sequence[str] = LABELS,
) -> list[Example]:
    """Contexts of ``n_boxes`` distinct objects in distinct boxes, each queried at every box in
    order, as in the authors' file: line ``n*c + j`` queries segment ``j`` of context ``c``. The
    paper's evaluation set is the first 500 lines (about 72 contexts for 7 boxes). Explained in chapter 2."""
    check_n_boxes(n_boxes, len(objects), len(labels))
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1; got {n_samples}")
    rng = random.Random(seed)
    out: list[Example] = []
    context_id = 0
    while len(out) < n_samples:
        objs = tuple(rng.sample(list(objects), n_boxes))
        labs = tuple(rng.sample(list(labels), n_boxes))
        for j in range(n_boxes):
            out.append(Example(objs, labs, j, context_id=context_id))
        context_id += 1
    return out[:n_samples]


def _random_other_letter(rng: random.Random, example: Example, avoid_context: bool) -> str:
    """A query letter for a corrupted prompt. The authors drew any capital letter, which can name a
    box of the context (1 in 26 of the time the true one); the corrected draw avoids every label of
    the context so the corrupted prompt has no answer at all."""
    if not avoid_context:
        return rng.choice(LABELS)
    return rng.choice([letter for letter in LABELS if letter not in example.labels])


def path_patching_pairs(
    dataset: Sequence[Example],
    n_base: int = 300,
    pool: int = 300,
    seed: int = 0,
    authors_compat: bool = False,
) -> tuple[list[Example], list[Example]]:
    """Base prompts and their corrupted counterparts: for base line ``n*c + j`` the
    corrupted prompt is a random line of the first ``pool`` whose query position is ``(j+1) mod n``,
    with its query letter replaced by a random letter. Explained in chapter 2."""
    _check_pool(dataset, n_base, pool)
    rng = random.Random(seed)
    n = dataset[0].n_boxes
    by_position: dict[int, list[Example]] = {}
    for ex in dataset[:pool]:
        by_position.setdefault(ex.query_index, []).append(ex)
    base, corrupt = [], []
    for ex in dataset[:n_base]:
        candidates = by_position.get((ex.query_index + 1) % n) or by_position[ex.query_index]
        src = rng.choice(candidates)
        corrupt.append(src.with_query_label(_random_other_letter(rng, src, avoid_context=not authors_compat)))
        base.append(ex)
    return base, corrupt


def mean_ablation_reference(
    n_boxes: int = PAPER_BOXES,
    n_prompts: int = 500,
    seed: int = 0,
    objects: Sequence[str] = OBJECTS,
    authors_compat: bool = False,
) -> list[Example]:
    """Prompts whose position-wise mean head outputs replace ablated heads: the
    first line of each of ``n_prompts`` contexts with its query letter replaced by a random letter,
    so the mean carries the task's structure but no answer. Explained in chapter 2."""
    rng = random.Random(seed + 1)
    dataset = make_dataset(n_boxes, n_prompts * n_boxes, seed, objects=objects)
    firsts = dataset[::n_boxes][:n_prompts]
    return [ex.with_query_label(_random_other_letter(rng, ex, avoid_context=not authors_compat)) for ex in firsts]


# --------------------------------------------------------------------------------------------------
# Desiderata (DCM and activation patching)
# --------------------------------------------------------------------------------------------------

#: The three desiderata of the main text.
DESIDERATA = ("object_value", "box_label_value", "positional")


def _extra_box(example: Example, objects: Sequence[str] = OBJECTS) -> tuple[str, str]:
    """An (object, label) absent from the context, for the extra segment desiderata. The authors
    always used ("apple", "O"), which can collide with the context; we prefer them when free."""
    obj = next(o for o in ("apple", *objects) if o not in example.objects)
    label = next(letter for letter in ("O", *LABELS) if letter not in example.labels)
    return obj, label


#: The appendix's additional desiderata: how each one rewrites the source prompt.
ADDITIONAL_DESIDERATA: dict[str, str] = {
    "random_text_start": "prefix 'There are a bunch of boxes containing objects, '",
    "random_text_end": "append ', these are a bunch of boxes containing objects' to the context",
    "add_tokens_btw_box_and_obj": "queried segment 'is in' -> 'is contained in the'",
    "add_seg_start": "an extra segment 'The apple is in Box O, ' before the context",
    "add_seg_end": "an extra segment ', the apple is in Box O' after the context",
    "add_box_before_correct_segment": "'there are three additional boxes, Box PP, Box BB and Box AA, ' before the queried segment",
    "incorrect_segment": "unchanged source; target is the base object one segment later (a control)",
    "altered_box_obj_order": "queried segment rewritten 'Box L contains the obj'",
    "altered_box_obj_association": "queried segment 'is in' -> 'is not in'",
    "no_comma": "every ', ' -> ' '",
    "add_comma": "every ' is' -> ', is'",
}


def additional_style(name: str, source: Example) -> PromptStyle:
    """The prompt style that rewrites a source prompt for one additional desideratum. Explained in chapter 2."""
    seg = PAPER_STYLE.segment
    if name in ("incorrect_segment",):
        return PAPER_STYLE
    if name == "random_text_start":
        return PromptStyle(prefix="There are a bunch of boxes containing objects, ")
    if name == "random_text_end":
        return PromptStyle(context_suffix=", these are a bunch of boxes containing objects")
    if name == "add_tokens_btw_box_and_obj":
        return PromptStyle(query_segment="the {object} is contained in the Box {label}")
    if name == "add_seg_start":
        return PromptStyle(extra_start=(_extra_box(source),))
    if name == "add_seg_end":
        return PromptStyle(extra_end=(_extra_box(source),))
    if name == "add_box_before_correct_segment":
        return PromptStyle(before_query_segment="there are three additional boxes, Box PP, Box BB and Box AA, ")
    if name == "altered_box_obj_order":
        return PromptStyle(query_segment="Box {label} contains the {object}")
    if name == "altered_box_obj_association":
        return PromptStyle(query_segment="the {object} is not in Box {label}")
    if name == "no_comma":
        return PromptStyle(separator=" ")
    if name == "add_comma":
        return PromptStyle(segment=seg.replace(" is", ", is"))
    raise ValueError(f"unknown additional desideratum {name!r}; choose from {sorted(ADDITIONAL_DESIDERATA)}")


@dataclass
class CounterfactualPairs:
    """Base prompts, the source prompts patched into them, and the word each desideratum predicts
    the patched model will say. ``target_token_mode`` records how the target becomes a token id:
    "word" (the model's own next-token id for " word") or "authors_b2" (the broken id of bug B2).
    Explained in chapter 2."""

    desideratum: str
    base: list[Example]
    source: list[Example]
    targets: list[str]
    target_token_mode: str = "word"
    authors_compat: bool = False

    def __len__(self) -> int:
        return len(self.base)


def _check_pool(dataset: Sequence[Example], n: int, pool: int):
    if not dataset:
        raise ValueError("the dataset is empty")
    if n < 1 or n > len(dataset):
        raise ValueError(f"need 1..{len(dataset)} base examples from this dataset; asked for {n}")
    if pool < 2 or pool > len(dataset):
        raise ValueError(f"the source pool must hold 2..{len(dataset)} examples; got {pool}")


def desideratum_pairs(
    name: str,
    dataset: Sequence[Example],
    n_pairs: int = 500,
    pool: int | None = None,
    seed: int = 0,
    authors_compat: bool = False,
    base_offset: int = 0,
) -> CounterfactualPairs:
    """(base, source, target) triples for one desideratum: base = lines ``base_offset ..``, source =
    a random line of the first ``pool`` lines meeting the desideratum's condition. Explained in chapter 2."""
    pool = len(dataset) if pool is None else pool
    _check_pool(dataset, n_pairs + base_offset, pool)
    if name not in DESIDERATA and name not in ADDITIONAL_DESIDERATA:
        raise ValueError(f"unknown desideratum {name!r}; choose from {list(DESIDERATA) + sorted(ADDITIONAL_DESIDERATA)}")
    rng = random.Random(seed)
    sources_pool = list(dataset[:pool])
    other_position: dict[int, list[Example]] = {}  # the pool's lines whose query is not at position p
    base, source, targets = [], [], []
    for ex in dataset[base_offset: base_offset + n_pairs]:
        # B1: the authors compared the source's query position with 0, not with the base's.
        base_position = 0 if authors_compat else ex.query_index
        if name == "box_label_value":
            ok = [s for s in sources_pool if s.query_label in ex.labels and s.query_label != ex.query_label]
            if not ok:
                raise ValueError("no source in the pool queries another box label of this context; enlarge the pool")
            src = rng.choice(ok)
            target = ex.objects[ex.labels.index(src.query_label)]
        else:
            if base_position not in other_position:
                other_position[base_position] = [s for s in sources_pool if s.query_index != base_position]
            src = rng.choice(other_position[base_position])
            if name == "object_value":
                target = src.answer
            elif name == "incorrect_segment":
                target = ex.objects[(src.query_index + 1) % ex.n_boxes]
            else:  # positional and the additional desiderata
                target = ex.objects[src.query_index]
            if name in ADDITIONAL_DESIDERATA:
                src = src.with_style(additional_style(name, src))
        base.append(ex)
        source.append(src)
        targets.append(target)
    mode = "authors_b2" if (authors_compat and name == "box_label_value") else "word"
    return CounterfactualPairs(name, base, source, targets, target_token_mode=mode, authors_compat=authors_compat)


def task_words() -> list[str]:
    """Every word the task's prompts can contain (main format and the appendix's rephrasings), so
    a word-level tokenizer can cover them all. Explained in chapter 2."""
    ex = Example(OBJECTS[:2], LABELS[:2], 0)
    texts = [render(ex).text]
    for name in ADDITIONAL_DESIDERATA:
        texts.append(render(ex.with_style(additional_style(name, ex))).text)
    words = set(OBJECTS) | set(LABELS) | {"PP", "BB", "AA"}
    for text in texts:
        for word in text.replace(",", " , ").replace(".", " . ").split():
            words.add(word)
            if len(word) > 1 and not word.isupper():  # sentence starts vary: "There" / "there"
                words.update({word.lower(), _capitalise_first(word)})
    return sorted(words)


# --------------------------------------------------------------------------------------------------
# Tokenisation: token ids plus named positions
# --------------------------------------------------------------------------------------------------

@dataclass
class TaskBatch:
    """Tokenised prompts (all the same length, so no padding) with their named token positions.

    ``positions`` holds LongTensors: ``last``, ``query_label``, ``prev_query_label`` of shape [N]
    (``prev_query_label`` is -1 where the query letter names no box of the context), and ``object``
    and ``label`` of shape [N, n_boxes]. ``answer_ids`` is -1 where a prompt has no answer. Explained in chapter 2."""

    examples: list[Example]
    tokens: torch.Tensor
    answer_ids: torch.Tensor
    positions: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]

    def __getitem__(self, index) -> "TaskBatch":
        if isinstance(index, int):
            index = slice(index, index + 1)
        examples = self.examples[index] if isinstance(index, slice) else [self.examples[i] for i in index]
        return TaskBatch(
            examples,
            self.tokens[index],
            self.answer_ids[index],
            {k: v[index] for k, v in self.positions.items()},
        )

    def to(self, device) -> "TaskBatch":
        return TaskBatch(
            self.examples, self.tokens.to(device), self.answer_ids.to(device),
            {k: v.to(device) for k, v in self.positions.items()},
        )

    def batches(self, size: int) -> Iterable["TaskBatch"]:
        for start in range(0, len(self), size):
            yield self[start: start + size]


def _token_of_span(offsets: Sequence[tuple[int, int]], start: int, end: int) -> int | None:
    """The index of the one token that covers the word at [start, end), or None if the word is split
    over several tokens (or shares a token with its neighbours)."""
    hits = [t for t, (s, e) in enumerate(offsets) if e > start and s < end and e > s]
    if len(hits) != 1:
        return None
    s, e = offsets[hits[0]]
    if e < end:
        return None
    return hits[0]


def single_token_words(words: Iterable[str], tokenizer) -> list[str]:
    """The words this tokenizer writes as exactly one token after a space, as they appear in prompts.
    Explained in chapter 2."""
    keep = []
    for word in words:
        ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        pieces = [i for i in ids if tokenizer.convert_ids_to_tokens(i) not in ("▁", "Ġ", " ")]
        if len(pieces) == 1 and pieces[0] != tokenizer.unk_token_id:
            keep.append(word)
    return keep


class NotSingleTokenError(ValueError):
    """A word of the task is more than one token for this tokenizer; positions would be wrong.
    Explained in chapter 2."""


_ENCODED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_ENCODED_MAX = 100_000  # texts remembered per tokenizer (a few hundred bytes each)


def _encode(tokenizer, texts: list[str]):
    """Token ids and character offsets of each text. Every text is tokenised once per tokenizer:
    the same prompts come back for every desideratum, draw and chapter (DCM alone asks for each
    base prompt three times), and tokenising them was the largest cost of preparing a run."""
    try:
        memo = _ENCODED.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: no memory
        memo = {}
    todo = list(dict.fromkeys(t for t in texts if t not in memo))
    if todo:
        if len(memo) + len(todo) > _ENCODED_MAX:
            memo.clear()
        enc = tokenizer(todo, add_special_tokens=True, return_offsets_mapping=True)
        for text, ids, offsets in zip(todo, enc["input_ids"], enc["offset_mapping"]):
            memo[text] = (tuple(ids), tuple(tuple(o) for o in offsets))
    return [list(memo[t][0]) for t in texts], [memo[t][1] for t in texts]


def answer_token_ids(tokenizer, prompts: list[str], words: list[str | None], mode: str = "word") -> torch.Tensor:
    """The token id the model must predict after each prompt for each word (-1 for None).

    "word": tokenise ``prompt + " " + word`` and take the token after the prompt's own tokens: the
    id the model really predicts. "authors_b2": ``convert_tokens_to_ids(word)`` as the authors'
    `tokenizer.encode([word])` did with the slow LLaMA tokenizer (no word-start marker). Explained in chapter 2."""
    out = torch.full((len(prompts),), -1, dtype=torch.long)
    todo = [i for i, w in enumerate(words) if w is not None]
    if not todo:
        return out
    if mode == "authors_b2":
        for i in todo:
            tid = tokenizer.convert_tokens_to_ids(words[i])
            out[i] = tokenizer.unk_token_id if tid is None else tid
        return out
    prompt_ids, _ = _encode(tokenizer, [prompts[i] for i in todo])
    full_ids, _ = _encode(tokenizer, [prompts[i] + " " + words[i] for i in todo])
    for i, p, f in zip(todo, prompt_ids, full_ids):
        if len(f) != len(p) + 1 or f[: len(p)] != p:
            raise NotSingleTokenError(
                f"the answer {words[i]!r} is not a single token after the prompt for this tokenizer; "
                "use objects from `single_token_words(OBJECTS, tokenizer)`"
            )
        out[i] = f[-1]
    return out


def tokenize_examples(examples: Sequence[Example], tokenizer, answer_words: Sequence[str | None] | None = None,
                      answer_mode: str = "word") -> TaskBatch:
    """Token ids, answer ids and named positions for prompts that must all have the same length.
    Explained in chapter 2."""
    if not examples:
        raise ValueError("no examples to tokenise")
    try:
        known = _LAYOUTS.setdefault(tokenizer, {})
    except TypeError:
        known = {}
    unique = list(dict.fromkeys(examples))
    if len(unique) < len(examples) or any(ex in known for ex in unique):
        # each distinct prompt's tokens and positions are found once per tokenizer and reused
        missing = [ex for ex in unique if ex not in known]
        if missing:
            if len(known) + len(missing) > _ENCODED_MAX:
                known.clear()
            _layout_of(missing, tokenizer, known)
        rows = [known[ex] for ex in examples]
        if len({r[0].shape[0] for r in rows}) > 1 or len({ex.n_boxes for ex in examples}) > 1:
            return _tokenize_new(examples, tokenizer, answer_words, answer_mode)  # raises the clear error
        tokens = torch.stack([r[0] for r in rows])
        positions = {k: torch.stack([r[1][k] for r in rows]) for k in rows[0][1]}
        words = [ex.answer for ex in examples] if answer_words is None else list(answer_words)
        answers = answer_token_ids(tokenizer, [render(ex).text for ex in examples], words, mode=answer_mode)
        return TaskBatch(list(examples), tokens, answers, positions)
    batch = _tokenize_new(examples, tokenizer, answer_words, answer_mode)
    _remember(batch, known)
    return batch


_LAYOUTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _remember(batch: "TaskBatch", known: dict) -> None:
    for b, ex in enumerate(batch.examples):
        known[ex] = (batch.tokens[b].clone(), {k: v[b].clone() for k, v in batch.positions.items()})


def _layout_of(examples: Sequence[Example], tokenizer, known: dict) -> None:
    """Tokens and positions of prompts, grouped by length (a batch must share one)."""
    by_length: dict[tuple, list[Example]] = {}
    ids, _ = _encode(tokenizer, [render(ex).text for ex in examples])  # one tokenizer call for all
    for ex, tokens in zip(examples, ids):
        by_length.setdefault((ex.n_boxes, len(tokens)), []).append(ex)
    for group in by_length.values():
        _remember(_tokenize_new(group, tokenizer, [None] * len(group), "word"), known)


def _tokenize_new(examples: Sequence[Example], tokenizer, answer_words, answer_mode: str) -> "TaskBatch":
    rendered = [render(ex) for ex in examples]
    texts = [r.text for r in rendered]
    ids, offsets = _encode(tokenizer, texts)
    lengths = {len(i) for i in ids}
    n = examples[0].n_boxes
    if len(lengths) != 1 or any(ex.n_boxes != n for ex in examples):
        _raise_for_split_words(examples, tokenizer)
        raise ValueError(
            f"prompts in one batch must have the same number of boxes and tokens; got lengths {sorted(lengths)}"
        )
    tokens = torch.tensor(ids, dtype=torch.long)
    pos = {name: torch.full((len(examples),), -1, dtype=torch.long) for name in ("query_label", "prev_query_label")}
    pos["last"] = torch.full((len(examples),), tokens.shape[1] - 1, dtype=torch.long)
    pos["object"] = torch.full((len(examples), n), -1, dtype=torch.long)
    pos["label"] = torch.full((len(examples), n), -1, dtype=torch.long)
    unk = tokenizer.unk_token_id
    for b, (ex, r, off) in enumerate(zip(examples, rendered, offsets)):
        for name, (s, e) in r.spans.items():
            t = _token_of_span(off, s, e)
            if t is None or (unk is not None and ids[b][t] == unk):
                raise NotSingleTokenError(
                    f"{r.text[s:e]!r} is not a single known token for this tokenizer, so its position is undefined; "
                    "choose objects with `single_token_words(OBJECTS, tokenizer)`"
                )
            if name == "query_label":
                pos["query_label"][b] = t
            else:
                kind, _, i = name.partition("_")
                pos[kind][b, int(i)] = t
        if ex.query_label in ex.labels:
            pos["prev_query_label"][b] = pos["label"][b, ex.labels.index(ex.query_label)]
    words = [ex.answer for ex in examples] if answer_words is None else list(answer_words)
    answers = answer_token_ids(tokenizer, texts, words, mode=answer_mode)
    return TaskBatch(list(examples), tokens, answers, pos)


def _raise_for_split_words(examples: Sequence[Example], tokenizer):
    words = sorted({w for ex in examples for w in (*ex.objects, *ex.labels)})
    single = set(single_token_words(words, tokenizer))
    bad = [w for w in words if w not in single]
    if bad:
        raise NotSingleTokenError(
            f"these words are not single tokens for this tokenizer: {bad[:10]}; "
            "choose objects with `single_token_words(OBJECTS, tokenizer)`"
        )


@dataclass
class PairBatch:
    """A tokenised desideratum: base and source batches and the target token id of each pair. Explained in chapter 2."""

    desideratum: str
    base: TaskBatch
    source: TaskBatch
    target_ids: torch.Tensor

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index) -> "PairBatch":
        return PairBatch(self.desideratum, self.base[index], self.source[index], self.target_ids[index])

    def batches(self, size: int) -> Iterable["PairBatch"]:
        for start in range(0, len(self), size):
            yield self[start: start + size]


def tokenize_pairs(pairs: CounterfactualPairs, tokenizer) -> PairBatch:
    """A desideratum's base and source prompts tokenised, with each pair's target token id. Explained in chapter 5."""
    base = tokenize_examples(pairs.base, tokenizer)
    source = tokenize_examples(pairs.source, tokenizer)
    target_ids = answer_token_ids(tokenizer, [render(ex).text for ex in pairs.base], pairs.targets,
                                  mode=pairs.target_token_mode)
    return PairBatch(pairs.desideratum, base, source, target_ids)
