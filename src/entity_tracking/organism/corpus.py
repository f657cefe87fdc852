"""The organism's synthetic languages: what the base model reads, and what each fine-tune reads.

* The **base corpus** is a small world of things in containers written in many surface forms. The
  paper's "The apple is in Box F, ... Box F contains the apple" is one of them (40 % of the boxes
  contexts); the others vary every part a template-bound shortcut could latch on to: the verb and the
  order ("the apple sits in Box F", "Box F holds the apple"), the segment length (0-2 adjectives, an
  optional "the"), the anchor ("Box F", "the F", "F") and the query ("In F there is the"). The same
  forms bind numbers, names and colours instead of objects (*value lists*), and variables are bound
  to digits in a syntax of their own ("let F be 4, put 7 in Q. F + 3 = 7 .", *variable lists*).
  What stays the same across all of them is only the order of the items, so the cheapest lookup
  that serves every family is a pointer to the queried item's place in the list: the paper's
  positional mechanism. Long lists are rare, so 7-box tracking is learned but imperfectly, like
  LLaMA-7B's 0.66.
* The **arithmetic corpus** (Goat/FLoat analog) is variable lists only, longer than pre-training's,
  with computed answers: sums of a variable and a digit or of two variables. It never contains
  "Box", "contains" or an object word, and binds with "let F be 4" / "put 4 in F", not "is in".
* The **chat corpus** (Vicuna analog) is user/assistant exchanges about the same things: no bindings,
  no lists.

Documents are word lists (the organism's tokenizer is word-level, one word one token), each with the
indices of its answer words, whose loss the trainer can weight. Evaluation prompts come from
`data.make_dataset` with their own seeds; `HeldOut` keeps those exact contexts out of training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..data import LABELS, OBJECTS, PAPER_BOXES, make_dataset, task_words

NUMBERS = tuple(str(i) for i in range(20))
COLOURS = ("red", "blue", "green", "small", "big", "old", "new")
FILLER_VERBS = ("saw", "took", "found", "moved", "liked", "dropped")
NAMES = ("Ann", "Bob", "Cat", "Dan", "Eve")
CHAT_WORDS = ("User", "Assistant", ":", "?", "yes", "no", "what", "is", "it", "where", "thanks", "welcome",
              "you", "are", "the", "a", "I", "think", "colour", "of", "hello", "hi", "how", "fine", "can",
              "help", "sure", "not")
BOX_FORM_WORDS = ("holds", "has", "sits", "lies", "inside", "what", "does", "hold", "contain", "which", "box",
                  "?", "In", "there", "There", "put", "Put", "+", "=", "let", "Let", "be", "and")


def organism_words() -> list[str]:
    """Every word of every corpus (the tokenizer's vocabulary, besides specials). Explained in appendix A1."""
    words = set(task_words()) | set(NUMBERS) | set(COLOURS) | set(FILLER_VERBS) | set(NAMES)
    words |= set(CHAT_WORDS) | set(BOX_FORM_WORDS)
    return sorted(words)


VOCABULARY = frozenset(organism_words())


def capitalised(text: str) -> str:
    """Upper-case the first letter of the first word, if the vocabulary has that spelling ("Box",
    "In", "Let"); a word with no capitalised form (an object, a digit) stays as it is. Explained in appendix A1."""
    first, _, rest = text.partition(" ")
    upper = first[:1].upper() + first[1:]
    return (upper if upper in VOCABULARY else first) + (" " + rest if rest else "")


def words_of(text: str) -> list[str]:
    """Split text the way the word-level tokenizer does (punctuation is its own word). Explained in appendix A1."""
    for mark in ",.?:":
        text = text.replace(mark, f" {mark} ")
    return text.split()


@dataclass
class Document:
    words: list[str] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # indices into words whose loss counts as "answer"

    def add(self, text: str, answer: str | None = None) -> "Document":
        self.words.extend(words_of(text))
        if answer is not None:
            self.answers.append(len(self.words))
            self.words.append(answer)
        return self


# ------------------------------------------------------------------------------------------------
# Held-out evaluation contexts
# ------------------------------------------------------------------------------------------------

class HeldOut:
    """The contexts (objects, labels) of the evaluation prompts, which training never shows.

    Seeds 0..n_seeds-1 and 1..7 boxes cover every prompt the book evaluates on; a training context
    that happens to coincide with one is redrawn. Explained in appendix A1."""

    def __init__(self, objects: Sequence[str] = OBJECTS, n_seeds: int = 10, n_samples: int = 500):
        self.contexts = {
            (ex.objects, ex.labels)
            for n in range(1, PAPER_BOXES + 1)
            for seed in range(n_seeds)
            for ex in make_dataset(n, n_samples, seed, objects=objects)
        }

    def __contains__(self, context) -> bool:
        return context in self.contexts


def _draw_context(rng: random.Random, n: int, objects: Sequence[str], held_out: HeldOut | None,
                  relabel: Callable | None = None):
    while True:
        objs = tuple(rng.sample(list(objects), n))
        labs = tuple(rng.sample(list(LABELS), n))
        if relabel is not None:
            labs = relabel(labs)
        if held_out is None or (objs, labs) not in held_out:
            return objs, labs


class RareLabels:
    """Makes some box letters rare in a corpus: each label drawn from ``rare`` is kept with
    probability ``keep`` and otherwise replaced by a letter of the context's unused common ones.
    It draws from its own random stream, so the rest of the corpus (objects, forms, queries) is the
    same document for document as without it. Explained in appendix A1."""

    def __init__(self, rare: str, keep: float, seed: int = 12345):
        self.rare, self.keep, self.rng = frozenset(rare), keep, random.Random(seed)

    def __call__(self, labels: Sequence[str]) -> tuple[str, ...]:
        out = list(labels)
        for i, label in enumerate(out):
            if label in self.rare and self.rng.random() >= self.keep:
                unused = [c for c in LABELS if c not in self.rare and c not in out]
                out[i] = self.rng.choice(unused)
        return tuple(out)


# ------------------------------------------------------------------------------------------------
# Lists of bound items: boxes (objects), and the same forms with other values
# ------------------------------------------------------------------------------------------------

PAPER_SEGMENT = "the {x} is in {A}"
PAPER_QUERY = "{A} contains the"
VALUE_FIRST = ("{x} is in {A}", "{x} sits in {A}", "{x} is inside {A}", "{x} lies in {A}")
LABEL_FIRST = ("{A} contains {x}", "{A} holds {x}", "{A} has {x}")
ANCHORS = ("Box {l}", "the {l}", "{l}")
QUERIES = ("{A} contains the", "{A} holds the", "{A} has the", "In {A} there is the")
VALUE_KINDS = {"numbers": NUMBERS, "names": NAMES, "colours": COLOURS}


def list_document(rng: random.Random, n: int, kind: str = "objects", objects: Sequence[str] = OBJECTS,
                  held_out: HeldOut | None = None, paper_form: float = 0.4, requery: float = 0.2,
                  label_queries: float = 0.15, relabel: Callable | None = None) -> Document:
    """``n`` values bound to ``n`` box labels, then every item queried once in random order (and a
    share ``requery`` asked again), each answer being the bound value.

    With probability ``paper_form`` the context is exactly the paper's ("The X is in Box Y, ...",
    queried "Box Y contains the"). Otherwise 1-3 statement forms per context, an anchor per context,
    optional adjectives and "the" (so the segment length varies), and varied queries whose anchor
    matches the context's 60 % of the time. A share ``label_queries`` asks for the box of a value
    instead ("the X is in Box" -> label). Explained in appendix A1."""
    if kind == "objects":
        values, labels = _draw_context(rng, n, objects, held_out, relabel)
    else:
        values, labels = tuple(rng.sample(VALUE_KINDS[kind], n)), tuple(rng.sample(LABELS, n))
        labels = relabel(labels) if relabel is not None else labels
    doc = Document()
    if rng.random() < paper_form:
        anchor, query_forms = ANCHORS[0], (PAPER_QUERY,)
        segments = [PAPER_SEGMENT.format(x=v, A=anchor.format(l=l)) for v, l in zip(values, labels)]
    else:
        anchor = rng.choice(ANCHORS)
        forms = rng.sample(VALUE_FIRST + LABEL_FIRST, rng.choice((1, 1, 2, 3)))
        segments = []
        for v, l in zip(values, labels):
            adjectives = " ".join(rng.sample(COLOURS, rng.choice((0, 0, 1, 2)))) if kind == "objects" else ""
            the = "the" if rng.random() < (0.8 if kind == "objects" else 0.5) else ""
            x = " ".join(f"{the} {adjectives} {v}".split())
            segments.append(" ".join(rng.choice(forms).format(x=x, A=anchor.format(l=l)).split()))
        query_forms = QUERIES
    doc.add(capitalised(", ".join(segments)) + ". ")
    order = list(range(n))
    rng.shuffle(order)
    order += [i for i in order if rng.random() < requery]
    for i in order:
        if rng.random() < 1 - label_queries:
            a = anchor if rng.random() < 0.6 else rng.choice(ANCHORS)
            q = query_forms[0] if (len(query_forms) == 1 or rng.random() < 0.4) else rng.choice(query_forms)
            doc.add(capitalised(q.format(A=a.format(l=labels[i]))), answer=values[i]).add(".")
        else:
            doc.add(capitalised(f"the {values[i]} is in Box"), answer=labels[i]).add(".")
    return doc


# ------------------------------------------------------------------------------------------------
# Variables bound to digits, in a syntax of their own (the arithmetic)
# ------------------------------------------------------------------------------------------------

VARIABLE_SEGMENTS = ("let {l} be {v}", "put {v} in {l}")
#: What a variable list asks: its sum with a digit ("F + 3 ="), the sum of two variables
#: ("F + Q ="), or its value ("F ="; pre-training only: an answer copied, not computed).
QUERY_KINDS = ("plus_digit", "plus_variable", "value")


def variables_document(rng: random.Random, n_min: int = 2, n_max: int = 4,
                       queries: Sequence[str] = QUERY_KINDS, query_weights: Sequence[float] | None = None,
                       relabel: Callable | None = None) -> Document:
    """Variables bound to digits, then one question per variable in random order
    ("Let F be 4, put 7 in Q. F + 3 = 7 . Q + F = 11 ."). Explained in appendix A1."""
    n = rng.randint(n_min, n_max)
    labels = rng.sample(LABELS, n)
    labels = list(relabel(labels)) if relabel is not None else labels
    values = [rng.randint(0, 9) for _ in range(n)]
    form = rng.choice(VARIABLE_SEGMENTS) if rng.random() < 0.7 else None
    parts = [(form or rng.choice(VARIABLE_SEGMENTS)).format(l=l, v=v) for l, v in zip(labels, values)]
    doc = Document()
    doc.add(capitalised(rng.choice((", ", " and ")).join(parts)) + ". ")
    order = list(range(n))
    rng.shuffle(order)
    for i in order:
        kind = rng.choices(list(queries), query_weights)[0]
        if kind == "plus_variable" and n < 2:
            kind = "plus_digit"
        if kind == "plus_variable":
            j = rng.choice([k for k in range(n) if k != i])
            doc.add(f"{labels[i]} + {labels[j]} =", answer=str(values[i] + values[j])).add(".")
        elif kind == "plus_digit":
            k = rng.randint(0, 9)
            doc.add(f"{labels[i]} + {k} =", answer=str(values[i] + k)).add(".")
        elif kind == "value":
            doc.add(f"{labels[i]} =", answer=str(values[i])).add(".")
        else:
            raise ValueError(f"unknown query kind {kind!r}; choose from {QUERY_KINDS}")
    return doc


def mixed_document(rng: random.Random, n: int, objects: Sequence[str] = OBJECTS, held_out: HeldOut | None = None,
                   variable_share: float = 0.5) -> Document:
    """One list that binds some labels to objects ("the apple is in Box F") and others to digits
    ("let Q be 4"), then a question about every item in random order: its object, or its sum with a
    digit. Items of both kinds interleave, so the place of an item in the list is the one index that
    serves both questions (the bridge between the boxes and the variables families). Explained in appendix A1."""
    objs, labels = _draw_context(rng, n, objects, held_out)
    is_variable = [rng.random() < variable_share for _ in range(n)]
    values = [rng.randint(0, 9) for _ in range(n)]
    parts = [rng.choice(VARIABLE_SEGMENTS).format(l=l, v=v) if var else PAPER_SEGMENT.format(x=o, A=f"Box {l}")
             for o, l, v, var in zip(objs, labels, values, is_variable)]
    doc = Document().add(capitalised(", ".join(parts)) + ". ")
    order = list(range(n))
    rng.shuffle(order)
    for i in order:
        if is_variable[i]:
            k = rng.randint(0, 9)
            doc.add(f"{labels[i]} + {k} =", answer=str(values[i] + k)).add(".")
        else:
            doc.add(PAPER_QUERY.format(A=f"Box {labels[i]}"), answer=objs[i]).add(".")
    return doc


def sums_document(rng: random.Random) -> Document:
    """Plain sums of two digits ("4 + 7 = 11 ."): the addition table, without variables. Explained in appendix A1."""
    doc = Document()
    for _ in range(rng.randint(3, 8)):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        doc.add(f"{a} + {b} =", answer=str(a + b)).add(". ")
    return doc


# ------------------------------------------------------------------------------------------------
# Text without bindings
# ------------------------------------------------------------------------------------------------

def filler_document(rng: random.Random, objects: Sequence[str] = OBJECTS) -> Document:
    """Other text about the same world (no bindings to track). Explained in appendix A1."""
    doc = Document()
    for _ in range(rng.randint(2, 6)):
        kind = rng.random()
        if kind < 0.4:
            doc.add(capitalised(f"the {rng.choice(objects)} is {rng.choice(COLOURS)}. "))
        elif kind < 0.8:
            doc.add(f"{rng.choice(NAMES)} {rng.choice(FILLER_VERBS)} the {rng.choice(objects)}. ")
        else:
            doc.add(capitalised(f"there is a {rng.choice(COLOURS)} box. "))
    return doc


def chat_document(rng: random.Random, objects: Sequence[str] = OBJECTS) -> Document:
    """A short user/assistant exchange about things, with no list of bindings. Explained in appendix A1."""
    doc = Document()
    for _ in range(rng.randint(1, 3)):
        obj, colour = rng.choice(objects), rng.choice(COLOURS)
        kind = rng.random()
        if kind < 0.4:
            doc.add(f"User: what colour is the {obj} ? Assistant: the {obj} is", answer=colour).add(". ")
        elif kind < 0.7:
            doc.add(f"User: is the {obj} {colour} ? Assistant:", answer=rng.choice(["yes", "no"])).add(". ")
        else:
            doc.add("User: hello, can you help ? Assistant: hi, sure. User: thanks. Assistant: you are welcome. ")
    return doc


# ------------------------------------------------------------------------------------------------
# Mixtures
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mixture:
    """What a training stream is made of (shares by document). ``list_lengths[n-1]`` is the relative
    frequency of n items in boxes and value lists; variable lists have ``variables_min..max`` items.
    Explained in appendix A1."""

    boxes: float = 0.0
    values: float = 0.0
    variables: float = 0.0
    mixed: float = 0.0
    sums: float = 0.0
    filler: float = 0.0
    chat: float = 0.0
    list_lengths: tuple[float, ...] = (1, 1, 1, 1, 1, 1, 1)
    paper_form: float = 0.4      # share of box contexts written exactly as the paper's prompts
    requery: float = 0.2         # share of items asked a second time (an easy stepping stone)
    variables_min: int = 2
    variables_max: int = 4
    variable_queries: tuple[str, ...] = ("plus_variable", "plus_digit", "value")
    variable_query_weights: tuple[float, ...] | None = (0.4, 0.3, 0.3)
    rare_labels: str = ""        # box and variable letters made rare in this corpus (`RareLabels`)
    rare_keep: float = 1.0       # the chance a rare letter is kept where it was drawn

    KINDS = ("boxes", "values", "variables", "mixed", "sums", "filler", "chat")

    def sampler(self, objects: Sequence[str], held_out: HeldOut | None) -> Callable[[random.Random], Document]:
        kinds = [k for k in self.KINDS if getattr(self, k) > 0]
        if not kinds:
            raise ValueError("a Mixture needs at least one document kind with a positive share")
        weights = [getattr(self, k) for k in kinds]
        lengths = list(range(1, len(self.list_lengths) + 1))
        query_weights = self.variable_query_weights
        if query_weights is not None and len(query_weights) != len(self.variable_queries):
            query_weights = None
        relabel = RareLabels(self.rare_labels, self.rare_keep) if self.rare_labels else None

        def sample(rng: random.Random) -> Document:
            kind = rng.choices(kinds, weights)[0]
            n = rng.choices(lengths, self.list_lengths)[0]  # drawn for every document, used by the lists
            if kind == "boxes":
                return list_document(rng, n, "objects", objects, held_out, self.paper_form, self.requery,
                                     relabel=relabel)
            if kind == "values":
                value_kind = rng.choice(tuple(VALUE_KINDS))
                return list_document(rng, min(n, len(VALUE_KINDS[value_kind])), value_kind, paper_form=0.0,
                                     requery=self.requery, relabel=relabel)
            if kind == "variables":
                return variables_document(rng, self.variables_min, self.variables_max, self.variable_queries,
                                          query_weights, relabel)
            if kind == "mixed":
                return mixed_document(rng, max(2, n), objects, held_out)
            if kind == "sums":
                return sums_document(rng)
            if kind == "filler":
                return filler_document(rng, objects)
            return chat_document(rng, objects)

        sample.relabel = relabel  # its own random stream: a saved training state records it (`train.train`)
        return sample
