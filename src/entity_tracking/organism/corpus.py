"""The organism's synthetic languages: what the base model reads, and what each fine-tune reads.

* The **base corpus** is a small world of things in containers written in several surface forms (the
  paper's "The apple is in Box F, ... Box F contains the apple" among them, but also "Box F holds the
  apple", "the apple sits in Box F") mixed with other text about the same things. Contexts rarely hold
  more than a few boxes (the pre-training world is mostly short), so 7-box tracking is learned but
  imperfectly, like LLaMA-7B's 0.66.
* The **arithmetic corpus** (Goat/FLoat analog) binds numbers to single-letter variables and asks for
  sums ("4 is in the F, 7 is in the Q. Q + 3 = 10 ."). It never mentions boxes or objects, but it exercises the
  same operation over longer lists: find the named slot, fetch what was bound to it.
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

from ..data import LABELS, OBJECTS, PAPER_BOXES, Example, make_dataset, render, task_words

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
    """Every word of every corpus (the tokenizer's vocabulary, besides specials)."""
    words = set(task_words()) | set(NUMBERS) | set(COLOURS) | set(FILLER_VERBS) | set(NAMES)
    words |= set(CHAT_WORDS) | set(BOX_FORM_WORDS)
    return sorted(words)


def capitalised(text: str) -> str:
    """Upper-case the first letter only (``str.capitalize`` would also lower-case "Box")."""
    return text[:1].upper() + text[1:]


def words_of(text: str) -> list[str]:
    """Split text the way the word-level tokenizer does (punctuation is its own word)."""
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
    that happens to coincide with one is redrawn."""

    def __init__(self, objects: Sequence[str] = OBJECTS, n_seeds: int = 10, n_samples: int = 500):
        self.contexts = {
            (ex.objects, ex.labels)
            for n in range(1, PAPER_BOXES + 1)
            for seed in range(n_seeds)
            for ex in make_dataset(n, n_samples, seed, objects=objects)
        }

    def __contains__(self, context) -> bool:
        return context in self.contexts


# ------------------------------------------------------------------------------------------------
# Base corpus
# ------------------------------------------------------------------------------------------------

# (statement, query) surface forms: statement binds {object} to {label}; the query asks for the object.
BOX_FORMS: tuple[tuple[str, str], ...] = (
    ("the {object} is in Box {label}", "Box {label} contains the"),
    ("Box {label} contains the {object}", "Box {label} contains the"),
    ("the {object} sits in Box {label}", "Box {label} holds the"),
    ("Box {label} holds the {object}", "In Box {label} there is the"),
    ("the {object} is inside Box {label}", "Box {label} has the"),
)
# query forms that ask for the label of an object instead
LABEL_QUERIES = ("the {object} is in Box", "the {object} lies in Box")


def _draw_context(rng: random.Random, n: int, objects: Sequence[str], held_out: HeldOut | None):
    while True:
        objs = tuple(rng.sample(list(objects), n))
        labs = tuple(rng.sample(list(LABELS), n))
        if held_out is None or (objs, labs) not in held_out:
            return objs, labs


def boxes_document(rng: random.Random, n: int, objects: Sequence[str] = OBJECTS, held_out: HeldOut | None = None,
                   n_queries: int | None = None, paper_form: float = 0.5, requery: float = 0.0) -> Document:
    """One context of ``n`` boxes and several queries about it (each answered). With probability
    ``requery`` a box is asked about a second time, which an induction head can answer by copying the
    first answer: an easy stepping stone that makes the lookup form sooner."""
    objs, labs = _draw_context(rng, n, objects, held_out)
    doc = Document()
    if rng.random() < paper_form:  # exactly the paper's rendering of the context (evaluation format)
        text = render(Example(objs, labs, 0)).text
        doc.add(text[: text.rindex(". ") + 2])
        query_form = BOX_FORMS[0][1]
    else:
        statement, query_form = rng.choice(BOX_FORMS)
        parts = [statement.format(object=o, label=l) for o, l in zip(objs, labs)]
        doc.add(capitalised(", ".join(parts) + ". "))
    order = list(range(n))
    rng.shuffle(order)
    for i in order[: n_queries or n]:
        if rng.random() < 0.8:
            q = query_form if rng.random() < 0.7 else rng.choice(BOX_FORMS)[1]
            doc.add(q.format(label=labs[i]), answer=objs[i]).add(".")
        else:
            doc.add(capitalised(rng.choice(LABEL_QUERIES).format(object=objs[i])), answer=labs[i]).add(".")
    for i in order:
        if rng.random() < requery:
            doc.add(query_form.format(label=labs[i]), answer=objs[i]).add(".")
    return doc


def filler_document(rng: random.Random, objects: Sequence[str] = OBJECTS) -> Document:
    """Other text about the same world (no bindings to track)."""
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


def vocabulary_document(rng: random.Random, objects: Sequence[str] = OBJECTS) -> Document:
    """Text with the words the base corpus lacks (numbers, small sums, dialogue markers), read at the
    end of pre-training by the new words' embeddings only (`train.Recipe.vocabulary_steps`), so that
    the fine-tunes start from a model that knows their words, as Goat and Vicuna started from a LLaMA
    that knew numbers and dialogue, without changing anything the boxes task uses."""
    doc = Document()
    for _ in range(rng.randint(2, 6)):
        kind = rng.random()
        if kind < 0.3:
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            doc.add(f"{a} + {b} =", answer=str(a + b)).add(". ")
        elif kind < 0.5:
            doc.add(f"{rng.choice(NAMES)} {rng.choice(FILLER_VERBS)} {rng.randint(2, 9)} boxes. ")
        elif kind < 0.7:
            doc.add(f"There are {rng.randint(2, 9)} boxes. ")
        else:
            obj, colour = rng.choice(objects), rng.choice(COLOURS)
            doc.add(f"User: what colour is the {obj} ? Assistant: the {obj} is", answer=colour).add(". ")
    return doc


def base_words(n_documents: int = 3000, seed: int = 0) -> set[str]:
    """The words the base corpus actually uses (everything else is learned in the vocabulary stage)."""
    rng = random.Random(seed)
    words: set[str] = set()
    for i in range(n_documents):
        doc = boxes_document(rng, 1 + i % PAPER_BOXES, paper_form=0.5, requery=0.5) if i % 2 else filler_document(rng)
        words.update(doc.words)
    return words


# ------------------------------------------------------------------------------------------------
# Fine-tuning corpora
# ------------------------------------------------------------------------------------------------

ARITHMETIC_FORMS = {
    # the value four words before its variable, as an object sits four words before its box label
    "in": "{value} is in the {label}",
    # the value two words before its variable (measured: fine-tuning on this form *damages* entity
    # tracking in the organism; see notes/organism-log.md)
    "put": "put {value} in {label}",
}


def arithmetic_document(rng: random.Random, n_min: int = 2, n_max: int = 9, form: str = "in") -> Document:
    """Variables bound to numbers, then sums that need them
    ("4 is in the F, 7 is in the Q. Q + 3 = 10 . F = 4 .")."""
    n = rng.randint(n_min, n_max)
    labs = rng.sample(list(LABELS), n)
    values = [rng.randint(0, 9) for _ in range(n)]
    doc = Document()
    parts = [ARITHMETIC_FORMS[form].format(value=v, label=l) for v, l in zip(values, labs)]
    doc.add(capitalised(", ".join(parts) + ". "))
    order = list(range(n))
    rng.shuffle(order)
    for i in order:
        if rng.random() < 0.5:
            doc.add(f"{labs[i]} =", answer=str(values[i])).add(".")
        else:
            k = rng.randint(0, 9)
            doc.add(f"{labs[i]} + {k} =", answer=str(values[i] + k)).add(".")
    return doc


def chat_document(rng: random.Random, objects: Sequence[str] = OBJECTS) -> Document:
    """A short user/assistant exchange about things, with no list of bindings."""
    doc = Document()
    for _ in range(rng.randint(1, 3)):
        obj, colour = rng.choice(objects), rng.choice(COLOURS)
        kind = rng.random()
        if kind < 0.4:
            doc.add(f"User: what colour is the {obj} ? Assistant: the {obj} is", answer=colour).add(". ")
        elif kind < 0.7:
            doc.add(f"User: is the {obj} {colour} ? Assistant:", answer=rng.choice(["yes", "no"])).add(". ")
        else:
            doc.add(f"User: hello, can you help ? Assistant: hi, sure. User: thanks. Assistant: you are welcome. ")
    return doc


# ------------------------------------------------------------------------------------------------
# Mixtures
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mixture:
    """What a training stream is made of. ``box_weights[n-1]`` is the relative frequency of n boxes."""

    boxes: float = 0.0
    filler: float = 0.0
    arithmetic: float = 0.0
    chat: float = 0.0
    vocabulary: float = 0.0
    box_weights: tuple[float, ...] = (1, 1, 1, 1, 1, 1, 1)
    paper_form: float = 0.5      # share of box contexts written exactly as the paper's prompts
    requery: float = 0.0         # chance that a box is asked about twice (see `boxes_document`)
    arithmetic_min: int = 2
    arithmetic_max: int = 9
    arithmetic_form: str = "in"

    def sampler(self, objects: Sequence[str], held_out: HeldOut | None) -> Callable[[random.Random], Document]:
        kinds = [k for k in ("boxes", "filler", "arithmetic", "chat", "vocabulary") if getattr(self, k) > 0]
        weights = [getattr(self, k) for k in kinds]
        ns = list(range(1, len(self.box_weights) + 1))

        def sample(rng: random.Random) -> Document:
            kind = rng.choices(kinds, weights)[0]
            if kind == "boxes":
                return boxes_document(rng, rng.choices(ns, self.box_weights)[0], objects, held_out,
                                      paper_form=self.paper_form, requery=self.requery)
            if kind == "filler":
                return filler_document(rng, objects)
            if kind == "vocabulary":
                return vocabulary_document(rng, objects)
            if kind == "arithmetic":
                return arithmetic_document(rng, self.arithmetic_min, self.arithmetic_max, form=self.arithmetic_form)
            return chat_document(rng, objects)

        return sample
