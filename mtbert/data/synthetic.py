"""A small, self-made multi-task data set so the quickstart runs offline on a laptop.

`make_quickstart_data` writes three tasks that share one vocabulary (so sharing an encoder helps)
but ask different questions about it:

* sentiment (3 classes): opinions about things, places and people. The label follows from the
  words but not from any single keyword: negation flips polarity, in "X but Y" / "although X, Y" /
  "Y even though X" the main clause decides, "X and Y" with opposite polarities is mixed (neutral),
  and wishes such as "we hoped the soup would be great" state no opinion (neutral).
* paraphrase (binary): two renderings of an event (subject, action, object, place). Positives are
  re-worded (synonyms, active/passive, place moved to the front); negatives change one slot (another
  subject or object, an antonym, a negation, subject and object swapped) and are re-worded too, so
  word overlap alone does not decide.
* similarity (0-5): 5 x the mean slot agreement of two events (synonyms agree fully, the same kind
  of thing half), plus a little noise.

Everything comes from one `random.Random` per task seeded from `seed`, so a seed gives the same
bytes every run. A WordPiece vocabulary is trained on the generated train+dev text and saved as a
`BertTokenizerFast`, loadable with `AutoTokenizer.from_pretrained(out_dir / "tokenizer")`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from mtbert.errors import MtbertError

SPLITS = ("train", "dev", "test")
TASKS = ("sentiment", "paraphrase", "similarity")
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] first, so its id is 0
# The recipe's default model.max_length; quickstart sentences are far shorter.
MODEL_MAX_LENGTH = 128
# Tells a previous output (safe to replace) from a user's folder (refused).
MARKER_FILE = ".mtbert-quickstart.json"
GENERATOR = "mtbert.data.synthetic.make_quickstart_data"
FORMAT_VERSION = 1
ID_PREFIX = {"sentiment": "sent", "paraphrase": "para", "similarity": "sim"}

# ---------------------------------------------------------------------------------------------
# Shared lexicon. Each entry is a synonym group; the first word of a group is no more "correct"
# than the others. Groups carry a category so similarity can give half credit to related words.
# ---------------------------------------------------------------------------------------------

# People who act in events and are talked about in reviews: (category, synonyms).
AGENTS = [
    ("worker", ("chef", "cook")),
    ("worker", ("doctor", "physician")),
    ("worker", ("teacher", "instructor")),
    ("worker", ("lawyer", "attorney")),
    ("worker", ("author", "writer")),
    ("worker", ("singer", "vocalist")),
    ("worker", ("sailor", "seaman")),
    ("worker", ("shopkeeper", "merchant")),
    ("worker", ("boss", "manager")),
    ("worker", ("farmer",)),
    ("worker", ("pilot", "aviator")),
    ("worker", ("mechanic", "technician")),
    ("family", ("child", "kid")),
    ("family", ("woman", "lady")),
    ("family", ("man", "gentleman")),
    ("family", ("student", "pupil")),
    ("family", ("grandmother", "grandma")),
    ("family", ("neighbor", "neighbour")),
    ("family", ("uncle",)),
    ("family", ("sister",)),
    ("family", ("boy", "lad")),
    ("family", ("girl", "lass")),
]

# Things that events happen to: (category, synonyms).
OBJECTS = [
    ("food", ("soup", "broth")),
    ("food", ("cake", "gateau")),
    ("food", ("pie", "tart")),
    ("food", ("stew", "casserole")),
    ("food", ("bread", "loaf")),
    ("food", ("salad",)),
    ("food", ("sandwich", "sub")),
    ("food", ("biscuit", "cookie")),
    ("vehicle", ("car", "automobile")),
    ("vehicle", ("bicycle", "bike")),
    ("vehicle", ("truck", "lorry")),
    ("vehicle", ("boat", "vessel")),
    ("vehicle", ("bus", "coach")),
    ("vehicle", ("motorcycle", "motorbike")),
    ("item", ("sofa", "couch")),
    ("item", ("phone", "telephone")),
    ("item", ("clock", "timepiece")),
    ("item", ("bag", "sack")),
    ("item", ("lamp", "lantern")),
    ("item", ("present", "gift")),
    ("item", ("chair", "seat")),
    ("item", ("television", "tv")),
    ("document", ("letter", "note")),
    ("document", ("contract", "agreement")),
    ("document", ("story", "tale")),
    ("document", ("map", "chart")),
    ("document", ("report", "summary")),
    ("document", ("poem", "verse")),
    ("document", ("recipe",)),
]

# Places: (category, preposition, synonyms).
PLACES = [
    ("indoor", "in", ("kitchen", "cookhouse")),
    ("indoor", "in", ("office", "workplace")),
    ("indoor", "in", ("shop", "store")),
    ("indoor", "in", ("library",)),
    ("indoor", "at", ("hospital", "infirmary")),
    ("indoor", "in", ("hotel", "inn")),
    ("indoor", "at", ("museum", "gallery")),
    ("indoor", "in", ("garage", "workshop")),
    ("outdoor", "at", ("market", "bazaar")),
    ("outdoor", "in", ("garden", "yard")),
    ("outdoor", "at", ("harbor", "port")),
    ("outdoor", "in", ("village", "hamlet")),
    ("outdoor", "in", ("park",)),
    ("outdoor", "at", ("station", "terminal")),
    ("outdoor", "on", ("beach", "shore")),
    ("outdoor", "in", ("forest", "woods")),
]

# A verb form: (base, past, past participle). Irregular verbs need all three for negation
# ("did not buy") and the passive ("was bought by").
Verb = tuple[str, str, str]


@dataclass(frozen=True)
class Action:
    """A verb synonym group, what it can act on, and the group that means the opposite."""

    name: str
    forms: tuple[Verb, ...]
    objects: tuple[str, ...]  # object categories it takes; "agent" means people
    antonym: str | None = None


ACTIONS = [
    Action("buy", (("buy", "bought", "bought"), ("purchase", "purchased", "purchased")),
           ("food", "vehicle", "item"), "sell"),
    Action("sell", (("sell", "sold", "sold"),), ("food", "vehicle", "item"), "buy"),
    Action("cook", (("cook", "cooked", "cooked"), ("prepare", "prepared", "prepared")), ("food",)),
    Action("eat", (("eat", "ate", "eaten"), ("consume", "consumed", "consumed")), ("food",)),
    Action("repair", (("repair", "repaired", "repaired"), ("fix", "fixed", "fixed"),
                      ("mend", "mended", "mended")), ("vehicle", "item"), "break"),
    Action("break", (("break", "broke", "broken"), ("damage", "damaged", "damaged"),
                     ("wreck", "wrecked", "wrecked")), ("vehicle", "item"), "repair"),
    Action("write", (("write", "wrote", "written"), ("compose", "composed", "composed")),
           ("document",)),
    Action("read", (("read", "read", "read"), ("study", "studied", "studied")), ("document",)),
    Action("find", (("find", "found", "found"), ("discover", "discovered", "discovered"),
                    ("locate", "located", "located")),
           ("food", "vehicle", "item", "document"), "lose"),
    Action("lose", (("lose", "lost", "lost"), ("misplace", "misplaced", "misplaced")),
           ("vehicle", "item", "document"), "find"),
    Action("clean", (("clean", "cleaned", "cleaned"), ("wash", "washed", "washed")),
           ("vehicle", "item")),
    Action("hide", (("hide", "hid", "hidden"), ("conceal", "concealed", "concealed")),
           ("food", "item", "document"), "show"),
    Action("show", (("show", "showed", "shown"), ("reveal", "revealed", "revealed")),
           ("food", "item", "document"), "hide"),
    Action("help", (("help", "helped", "helped"), ("assist", "assisted", "assisted"),
                    ("aid", "aided", "aided")), ("agent",), "ignore"),
    Action("ignore", (("ignore", "ignored", "ignored"), ("neglect", "neglected", "neglected")),
           ("agent",), "help"),
    Action("call", (("call", "called", "called"), ("phone", "phoned", "phoned")), ("agent",)),
    Action("hire", (("hire", "hired", "hired"), ("employ", "employed", "employed")),
           ("agent",), "fire"),
    Action("fire", (("fire", "fired", "fired"), ("dismiss", "dismissed", "dismissed")),
           ("agent",), "hire"),
    Action("praise", (("praise", "praised", "praised"),
                      ("compliment", "complimented", "complimented")), ("agent",), "blame"),
    Action("blame", (("blame", "blamed", "blamed"), ("criticize", "criticized", "criticized")),
           ("agent",), "praise"),
    Action("teach", (("teach", "taught", "taught"), ("instruct", "instructed", "instructed")),
           ("agent",)),
    Action("visit", (("visit", "visited", "visited"),), ("agent",)),
]
ACTION_BY_NAME = {action.name: action for action in ACTIONS}

# ---------------------------------------------------------------------------------------------
# Sentiment lexicon.
# ---------------------------------------------------------------------------------------------

POSITIVE_ADJECTIVES = (
    "good", "great", "excellent", "wonderful", "delightful", "pleasant", "superb", "lovely",
    "brilliant", "charming", "impressive", "fantastic", "enjoyable", "friendly", "reliable",
    "marvelous", "splendid", "terrific", "helpful", "outstanding",
)
NEGATIVE_ADJECTIVES = (
    "bad", "awful", "terrible", "dreadful", "boring", "disappointing", "poor", "rude",
    "unpleasant", "horrible", "useless", "mediocre", "dull", "clumsy", "unreliable", "nasty",
    "miserable", "annoying", "shabby", "lousy",
)
# Words that describe without judging; negating them ("not new") stays neutral.
NEUTRAL_ADJECTIVES = (
    "ordinary", "typical", "new", "old", "small", "large", "modern", "local", "brown", "square",
    "round", "busy", "familiar", "foreign", "heavy", "light", "simple", "traditional", "usual",
    "wooden",
)
# Opinion verbs: (base, past).
POSITIVE_VERBS = (
    ("love", "loved"), ("enjoy", "enjoyed"), ("like", "liked"), ("adore", "adored"),
    ("admire", "admired"), ("appreciate", "appreciated"), ("recommend", "recommended"),
)
NEGATIVE_VERBS = (
    ("hate", "hated"), ("dislike", "disliked"), ("regret", "regretted"), ("despise", "despised"),
    ("resent", "resented"), ("detest", "detested"),
)
# Verbs that report contact without an opinion.
NEUTRAL_VERBS = (
    ("visit", "visited"), ("see", "saw"), ("describe", "described"), ("mention", "mentioned"),
    ("notice", "noticed"), ("remember", "remembered"), ("photograph", "photographed"),
    ("discuss", "discussed"),
)
INTENSIFIERS = ("very", "really", "quite", "extremely", "truly", "rather", "incredibly", "so")
# Copulas with their negated forms; both negators ("not", "never") flip polarity.
COPULAS = (
    ("was", ("was not", "was never")),
    ("is", ("is not", "is never")),
    ("seemed", ("did not seem", "never seemed")),
    ("looked", ("did not look", "never looked")),
)
HOLDERS = ("I", "we", "my sister", "the critics", "everyone", "our guests", "my friends", "they")
# Wishes and expectations state no opinion about what happened: "we hoped the stew would be great".
IRREALIS = (
    "{holder} hoped {target} would be {adj}",
    "{holder} expected {target} to be {adj}",
    "{holder} wondered whether {target} would be {adj}",
    "{holder} asked if {target} was {adj}",
)
# Connectives where the second clause is the main one and decides the label.
CONTRAST_SECOND = ("{a} but {b}", "{a}, but {b}", "although {a}, {b}", "{a}; however, {b}")
# Connectives where the main clause comes first.
CONTRAST_FIRST = ("{b} even though {a}", "{b}, although {a}", "{b} despite the fact that {a}")

ADJECTIVES_BY_POLARITY = {1: POSITIVE_ADJECTIVES, -1: NEGATIVE_ADJECTIVES, 0: NEUTRAL_ADJECTIVES}
VERBS_BY_POLARITY = {1: POSITIVE_VERBS, -1: NEGATIVE_VERBS, 0: NEUTRAL_VERBS}

NEGATIVE, NEUTRAL, POSITIVE = 0, 1, 2  # sentiment label ids
POLARITY_OF_LABEL = {NEGATIVE: -1, NEUTRAL: 0, POSITIVE: 1}


# ---------------------------------------------------------------------------------------------
# Events: the meaning shared by paraphrase and similarity.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """Who did what to whom and where; indexes into the lexicons above."""

    agent: int  # index into AGENTS
    action: str  # Action.name
    negated: bool
    obj: int  # index into OBJECTS, or into AGENTS when the action takes people
    place: int | None  # index into PLACES


def _takes_people(event: Event) -> bool:
    return ACTION_BY_NAME[event.action].objects == ("agent",)


def _random_event(rng: random.Random) -> Event:
    action = rng.choice(ACTIONS)
    agent = rng.randrange(len(AGENTS))
    obj = _random_object(rng, action, exclude=agent)
    place = rng.randrange(len(PLACES)) if rng.random() < 0.7 else None
    return Event(agent, action.name, rng.random() < 0.15, obj, place)


def _random_object(rng: random.Random, action: Action, exclude: int | None = None) -> int:
    """An object index the action can take; people never act on themselves."""
    if action.objects == ("agent",):
        return rng.choice([i for i in range(len(AGENTS)) if i != exclude])
    return rng.choice([i for i, (cat, _) in enumerate(OBJECTS) if cat in action.objects])


def _noun(event: Event, slot: str, rng: random.Random) -> str:
    """A randomly chosen synonym for the agent or object, with its article."""
    if slot == "agent" or _takes_people(event):
        index = event.agent if slot == "agent" else event.obj
        return "the " + rng.choice(AGENTS[index][1])
    return "the " + rng.choice(OBJECTS[event.obj][1])


def render_event(event: Event, rng: random.Random) -> str:
    """One wording of the event: synonyms, active or passive voice, the place first or last."""
    agent, obj = _noun(event, "agent", rng), _noun(event, "obj", rng)
    base, past, participle = rng.choice(ACTION_BY_NAME[event.action].forms)
    if rng.random() < 0.5:
        verb = f"did not {base}" if event.negated else past
        core = f"{agent} {verb} {obj}"
    else:
        verb = f"was not {participle}" if event.negated else f"was {participle}"
        core = f"{obj} {verb} by {agent}"
    if event.place is None:
        return _sentence(core)
    _, prep, names = PLACES[event.place]
    place = f"{prep} the {rng.choice(names)}"
    return _sentence(f"{place}, {core}" if rng.random() < 0.3 else f"{core} {place}")


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


# ---------------------------------------------------------------------------------------------
# Sentiment.
# ---------------------------------------------------------------------------------------------


def _target(rng: random.Random) -> str:
    """Something to have an opinion about, drawn from the shared lexicon."""
    kind = rng.random()
    if kind < 0.4:
        return "the " + rng.choice(rng.choice(OBJECTS)[1])
    if kind < 0.7:
        return "the " + rng.choice(rng.choice(PLACES)[2])
    return "the " + rng.choice(rng.choice(AGENTS)[1])


def _clause(rng: random.Random, polarity: int) -> str:
    """A clause whose polarity (-1, 0, +1) follows from its words, with negation where it flips."""
    negated = rng.random() < 0.35
    # A negated word of the opposite polarity gives the requested one: "not bad" is positive here.
    word_polarity = -polarity if negated else polarity
    target = _target(rng)
    if rng.random() < 0.6:
        copula, negations = rng.choice(COPULAS)
        verb = rng.choice(negations) if negated else copula
        adjective = rng.choice(ADJECTIVES_BY_POLARITY[word_polarity])
        if rng.random() < 0.35:
            adjective = f"{rng.choice(INTENSIFIERS)} {adjective}"
        return f"{target} {verb} {adjective}"
    base, past = rng.choice(VERBS_BY_POLARITY[word_polarity])
    holder = rng.choice(HOLDERS)
    if not negated:
        return f"{holder} {past} {target}"
    if rng.random() < 0.5:
        return f"{holder} did not {base} {target}"
    return f"{holder} never {past} {target}"


def _polar_sentence(rng: random.Random, polarity: int) -> str:
    """A positive or negative sentence; the deciding clause is not always the only clause."""
    kind = rng.random()
    if kind < 0.3:
        return _clause(rng, polarity)
    other = -polarity if rng.random() < 0.75 else 0  # the clause that does not decide
    if kind < 0.6:
        template = rng.choice(CONTRAST_SECOND)
    elif kind < 0.8:
        template = rng.choice(CONTRAST_FIRST)
    else:
        # "X and Y" agreeing clauses reinforce each other.
        return f"{_clause(rng, polarity)} and {_clause(rng, polarity)}"
    return template.format(a=_clause(rng, other), b=_clause(rng, polarity))


def _neutral_sentence(rng: random.Random) -> str:
    """No overall opinion: a plain description, a mixed verdict, a wish, or a bare event."""
    kind = rng.random()
    if kind < 0.3:
        return _clause(rng, 0)
    if kind < 0.55:
        # Opposite verdicts joined by "and" cancel out; "but" would make the second one win.
        first = rng.choice((-1, 1))
        return f"{_clause(rng, first)} and {_clause(rng, -first)}"
    if kind < 0.8:
        adjective = rng.choice(rng.choice((POSITIVE_ADJECTIVES, NEGATIVE_ADJECTIVES)))
        template = rng.choice(IRREALIS)
        return template.format(holder=rng.choice(HOLDERS), target=_target(rng), adj=adjective)
    return render_event(_random_event(rng), rng)[:-1]  # the same events paraphrase uses


def sentiment_example(rng: random.Random) -> tuple[str, int]:
    """A (sentence, label) pair; the label is drawn first so the classes stay balanced."""
    label = rng.choice((NEGATIVE, NEUTRAL, POSITIVE))
    polarity = POLARITY_OF_LABEL[label]
    text = _neutral_sentence(rng) if polarity == 0 else _polar_sentence(rng, polarity)
    return _sentence(text), label


# ---------------------------------------------------------------------------------------------
# Paraphrase and similarity.
# ---------------------------------------------------------------------------------------------


def _change_slot(event: Event, slot: str, rng: random.Random, same_category: bool) -> Event:
    """The event with one slot given another meaning: related (same category) or unrelated."""
    if slot == "agent":
        options = _other_indices(AGENTS, event.agent, same_category)
        if _takes_people(event):  # nobody helps or calls themselves
            options = [i for i in options if i != event.obj]
        return replace(event, agent=rng.choice(options))
    if slot == "obj":
        return replace(event, obj=rng.choice(_other_objects(event, same_category)))
    if slot == "place":
        if event.place is None:
            return replace(event, place=rng.randrange(len(PLACES)))
        return replace(event, place=rng.choice(_other_indices(PLACES, event.place, same_category)))
    # The action: a related change negates it or takes its antonym; otherwise any verb that fits.
    action = ACTION_BY_NAME[event.action]
    if same_category:
        if action.antonym and rng.random() < 0.5 and _fits(event, ACTION_BY_NAME[action.antonym]):
            return replace(event, action=action.antonym)
        return replace(event, negated=not event.negated)
    options = [a.name for a in ACTIONS
               if a.name not in (action.name, action.antonym) and _fits(event, a)]
    return replace(event, action=rng.choice(options))


def _other_objects(event: Event, same_category: bool) -> list[int]:
    """Objects other than the event's that its action can take."""
    if _takes_people(event):
        return [i for i in _other_indices(AGENTS, event.obj, same_category) if i != event.agent]
    allowed = ACTION_BY_NAME[event.action].objects
    for related in (same_category, not same_category):  # "cook" takes only food: no unrelated one
        options = [i for i in _other_indices(OBJECTS, event.obj, related)
                   if OBJECTS[i][0] in allowed]
        if options:
            return options
    raise AssertionError(f"no other object for {event}")


def _fits(event: Event, action: Action) -> bool:
    """Whether the event's object can take this action (people stay people, food stays food)."""
    if _takes_people(event):
        return action.objects == ("agent",)
    return OBJECTS[event.obj][0] in action.objects


def _other_indices(entries: list, current: int, same_category: bool) -> list[int]:
    """Indices of other lexicon entries, in the same category (entry[0]) as `current` or not."""
    return [i for i, entry in enumerate(entries)
            if i != current and (entry[0] == entries[current][0]) == same_category]


def _paraphrase_negative(event: Event, rng: random.Random) -> Event:
    """A close edit that changes the meaning (never just adds or drops information)."""
    kind = rng.random()
    if kind < 0.2 and _takes_people(event):
        # Same words, roles reversed: "the boy helped the girl" / "the girl helped the boy".
        return replace(event, agent=event.obj, obj=event.agent)
    if kind < 0.45:
        return _change_slot(event, "action", rng, same_category=True)  # antonym or negation
    slots = ("agent", "obj", "obj") if event.place is None else ("agent", "obj", "obj", "place")
    return _change_slot(event, rng.choice(slots), rng, same_category=rng.random() < 0.7)


def paraphrase_example(rng: random.Random) -> tuple[str, str, int]:
    """Two sentences and whether they mean the same; both are re-worded independently."""
    event = _random_event(rng)
    label = int(rng.random() < 0.45)
    other = event if label else _paraphrase_negative(event, rng)
    first = render_event(event, rng)
    for _ in range(10):  # a positive should not be a verbatim copy
        second = render_event(other, rng)
        if second != first:
            break
    return first, second, label


def _slot_agreement(a: int | None, b: int | None, entries) -> float:
    """1 for the same synonym group, 0.5 for the same category (or one side unstated), else 0."""
    if a == b:
        return 1.0
    if a is None or b is None:
        return 0.5
    return 0.5 if entries[a][0] == entries[b][0] else 0.0


def event_similarity(a: Event, b: Event) -> float:
    """Mean agreement of the four meaning slots, in [0, 1]."""
    if a.action == b.action:
        action = 1.0 if a.negated == b.negated else 0.5
    else:
        action = 0.5 if ACTION_BY_NAME[a.action].antonym == b.action else 0.0
    # A changed action still fits the object, so both objects index the same lexicon.
    obj = _slot_agreement(a.obj, b.obj, AGENTS if _takes_people(a) else OBJECTS)
    return (_slot_agreement(a.agent, b.agent, AGENTS) + action + obj
            + _slot_agreement(a.place, b.place, PLACES)) / 4


SIMILARITY_CHANGE_WEIGHTS = (1, 1, 1, 1.3, 1.6)  # how often 0, 1, 2, 3, 4 slots change


def similarity_example(rng: random.Random) -> tuple[str, str, float]:
    """Two sentences whose events share a random number of slots; score = 5 x agreement + noise."""
    first = _random_event(rng)
    second = first
    # Change 0..4 slots, each to a related or an unrelated meaning. Weighting toward more and
    # unrelated changes makes the scores roughly uniform over 0-5 instead of piling up near 5.
    # (A new action always fits the old kind of object, so the slots can change in any order.)
    changes = rng.choices(range(5), weights=SIMILARITY_CHANGE_WEIGHTS)[0]
    for slot in rng.sample(("action", "agent", "obj", "place"), changes):
        second = _change_slot(second, slot, rng, same_category=rng.random() < 0.3)
    score = 5 * event_similarity(first, second) + rng.gauss(0, 0.2)
    return render_event(first, rng), render_event(second, rng), round(min(5.0, max(0.0, score)), 2)


# ---------------------------------------------------------------------------------------------
# Splits and files.
# ---------------------------------------------------------------------------------------------

# Per task: the example maker, the TSV columns (the last one is the answer, left out of test).
TASK_FORMATS = {
    "sentiment": (sentiment_example, ("id", "sentence", "label")),
    "paraphrase": (paraphrase_example, ("id", "sentence1", "sentence2", "label")),
    "similarity": (similarity_example, ("id", "sentence1", "sentence2", "score")),
}


def _task_rng(task: str, seed: int) -> random.Random:
    # One generator per task: changing one task's code or sizes leaves the others' bytes alone.
    # String seeds are hashed with SHA-512 by `random`, so this is stable across runs and platforms.
    return random.Random(f"mtbert-quickstart/{task}/{seed}")


def generate_task(task: str, seed: int, sizes: dict[str, int]) -> dict[str, list[tuple]]:
    """Distinct examples (text part never repeats, so no test sentence is also a train sentence)."""
    make, _ = TASK_FORMATS[task]
    rng = _task_rng(task, seed)
    total = sum(sizes.values())
    examples, seen, attempts = [], set(), 0
    while len(examples) < total:
        attempts += 1
        if attempts > 50 * total:  # the templates cannot make that many different sentences
            raise MtbertError(
                f"{task}: could only make {len(examples)} distinct examples, {total} asked"
            )
        example = make(rng)
        if example[:-1] not in seen:
            seen.add(example[:-1])
            examples.append(example)
    splits, start = {}, 0
    for split in SPLITS:
        splits[split] = examples[start:start + sizes[split]]
        start += sizes[split]
    return splits


def _format_answer(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _write_tsv(path: Path, task: str, split: str, examples: list[tuple]) -> None:
    _, columns = TASK_FORMATS[task]
    with_answer = split != "test"
    lines = ["\t".join(columns if with_answer else columns[:-1])]
    for number, example in enumerate(examples, start=1):
        texts, answer = example[:-1], example[-1]
        if any(("\t" in t or "\n" in t or "\r" in t) for t in texts):
            # A bug in the templates, not a user error.
            raise ValueError(f"generated text with a tab or newline: {texts!r}")
        fields = [f"{ID_PREFIX[task]}-{split}-{number:06d}", *texts]
        if with_answer:
            fields.append(_format_answer(answer))
        lines.append("\t".join(fields))
    path.parent.mkdir(parents=True, exist_ok=True)
    # newline="\n": the same bytes on every platform.
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")


# ---------------------------------------------------------------------------------------------
# Tokenizer.
# ---------------------------------------------------------------------------------------------

# Characters given fixed ids before training. The `tokenizers` trainer numbers characters in hash
# map order and breaks ties between equally frequent merges by those numbers, so without this the
# vocabulary differs from run to run. Fixing them also keeps digits and punctuation out of [UNK]
# when users type their own sentences.
_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"
_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
SEED_TOKENS = [*SPECIAL_TOKENS, *_LETTERS, *_PUNCTUATION, *("##" + c for c in _LETTERS)]


def _bert_pipeline(model):
    """A `tokenizers.Tokenizer` that splits and lower-cases like BERT-uncased around `model`."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers

    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def train_wordpiece(texts: list[str], vocab_size: int) -> dict[str, int]:
    """A WordPiece vocabulary (token -> id, [PAD] = 0) learned from `texts` with `tokenizers`."""
    from tokenizers import models, trainers

    tokenizer = _bert_pipeline(models.WordPiece(unk_token="[UNK]"))
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SEED_TOKENS, continuing_subword_prefix="##",
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    vocab = tokenizer.get_vocab()
    if sorted(vocab.values()) != list(range(len(vocab))) or vocab["[PAD]"] != 0:
        raise RuntimeError("the WordPiece trainer returned non-contiguous ids")
    return vocab


def save_tokenizer(vocab: dict[str, int], folder: Path) -> None:
    """Save a BertTokenizerFast for `vocab` that `AutoTokenizer.from_pretrained(folder)` loads."""
    # transformers is imported here, not at the top: it takes seconds, and the CLI imports us.
    import transformers
    from tokenizers import models, processors

    # A fresh pipeline rather than the trained one: training registered the seed characters as
    # "special" added tokens, which would split words at every "a".
    tokenizer = _bert_pipeline(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    fast = transformers.BertTokenizerFast(
        tokenizer_object=tokenizer, do_lower_case=True, model_max_length=MODEL_MAX_LENGTH,
    )
    fast.save_pretrained(str(folder))
    # Recent transformers write only tokenizer.json; vocab.txt lets older versions and other
    # BERT tools read the vocabulary too.
    ordered = sorted(vocab, key=vocab.__getitem__)
    (folder / "vocab.txt").write_text("\n".join(ordered) + "\n", encoding="utf-8", newline="\n")


# ---------------------------------------------------------------------------------------------
# The data set folder.
# ---------------------------------------------------------------------------------------------

README_TEMPLATE = """\
# mtbert quickstart data (synthetic)

Made by `mtbert make-data quickstart --out <dir>` (`{generator}`), seed {seed}.
The same seed and sizes give the same bytes. Rows per task: train {train}, dev {dev}, test {test}
(test files have no answer column).

- `sentiment/`: `id, sentence, label`; 0 negative, 1 neutral, 2 positive. Negation flips
  polarity, in "X but Y" / "although X, Y" / "Y even though X" the main clause decides, opposite
  verdicts joined by "and" are neutral, and wishes ("we hoped the soup would be great") are neutral.
- `paraphrase/`: `id, sentence1, sentence2, label`; 1 when both describe the same event (re-worded
  with synonyms, passive voice or moved phrases), 0 after a close edit that changes the meaning
  (another person or thing, an antonym, a negation, swapped roles).
- `similarity/`: `id, sentence1, sentence2, score`; 0-5, five times the share of agreeing meaning
  slots (who, action, what, where; synonyms agree, related words half), plus a little noise.
- `tokenizer/`: a lower-casing WordPiece vocabulary of {vocab_size} tokens trained on the train and
  dev text with `tokenizers`; load it with `transformers.AutoTokenizer.from_pretrained`.

`{marker}` marks this folder as generated, so the command may replace it.
"""


GENERATORS = (GENERATOR, "mtbert.data.large_synthetic.make_large_data")
"The make-data generators whose earlier output a new one may replace."


def _is_previous_output(folder: Path) -> bool:
    try:
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("generator") in GENERATORS


def check_replaceable(out_dir: Path) -> None:
    """Refuse to replace anything but an empty folder or an earlier output of this generator."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise MtbertError(f"{out_dir}: exists and is not a folder; choose another --out")
    if any(out_dir.iterdir()) and not _is_previous_output(out_dir):
        raise MtbertError(
            f"{out_dir}: folder is not empty and was not made by `mtbert make-data` "
            f"(no {MARKER_FILE}); choose another --out or empty it"
        )


def sibling(path: Path, tag: str) -> Path:
    # Beside the target, so the final rename stays on one file system and is atomic.
    return path.parent / f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}"


def move_into_place(built: Path, out_dir: Path) -> None:
    """Replace `out_dir` with `built`; readers see the old folder or the new one, never half."""
    old = None
    if out_dir.exists():
        old = sibling(out_dir, "old")
        os.replace(out_dir, old)
    try:
        os.replace(built, out_dir)
    except OSError:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_sizes(sizes: dict[str, int], vocab_size: int) -> None:
    for split, rows in sizes.items():
        if not isinstance(rows, int) or rows < 1:
            raise MtbertError(f"n_{split} must be a positive whole number, got {rows!r}")
    if vocab_size <= len(SEED_TOKENS):
        raise MtbertError(f"vocab_size must be more than {len(SEED_TOKENS)}, got {vocab_size}")


def make_quickstart_data(
    out_dir: Path,
    seed: int = 0,
    n_train: int = 3000,
    n_dev: int = 500,
    n_test: int = 500,
    vocab_size: int = 1000,
) -> dict:
    """Write the three quickstart tasks and their tokenizer to `out_dir`; return the row counts.

    Returns {task: {split: rows}} for the three tasks plus "vocab_size", the size actually trained
    (at most `vocab_size`; less when the text has fewer distinct pieces). Raises MtbertError
    rather than overwrite a folder this generator did not make.
    """
    out_dir = Path(out_dir)
    sizes = {"train": n_train, "dev": n_dev, "test": n_test}
    _check_sizes(sizes, vocab_size)
    check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    build = sibling(out_dir, "tmp")
    build.mkdir()
    try:
        summary: dict = {}
        tokenizer_texts: list[str] = []
        for task in TASKS:
            splits = generate_task(task, seed, sizes)
            for split, examples in splits.items():
                _write_tsv(build / task / f"{split}.tsv", task, split, examples)
                if split != "test":  # the vocabulary sees train and dev only, as a user's would
                    tokenizer_texts.extend(t for example in examples for t in example[:-1])
            summary[task] = {split: len(examples) for split, examples in splits.items()}
        vocab = train_wordpiece(tokenizer_texts, vocab_size)
        save_tokenizer(vocab, build / "tokenizer")
        summary["vocab_size"] = len(vocab)
        readme = README_TEMPLATE.format(generator=GENERATOR, seed=seed, vocab_size=len(vocab),
                                        marker=MARKER_FILE, **sizes)
        (build / "README.md").write_text(readme, encoding="utf-8", newline="\n")
        marker = {"generator": GENERATOR, "format_version": FORMAT_VERSION, "seed": seed,
                  "requested_vocab_size": vocab_size, "summary": summary}
        (build / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n",
                                         encoding="utf-8", newline="\n")
        move_into_place(build, out_dir)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return summary
