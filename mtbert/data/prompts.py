"""Prompt-style inputs: each example recast as a question and a context, encoded as a cross pair.

A template's `context` (and, if wanted, its `question`) may use the placeholders `{a}` and `{b}`, the
example's first and second sentence; any other `{name}` is an error. A prompted task is encoded as
`[CLS] question [SEP] context [SEP]`, whether it reads one sentence or two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mtbert.errors import MtbertError

PLACEHOLDER = re.compile(r"\{(\w*)\}")
_PAIR_CONTEXT = "First sentence: {a} Second sentence: {b}"


@dataclass(frozen=True)
class PromptTemplate:
    """The question asked of every example, and the context the example's sentences are written into."""

    question: str
    context: str


BUILTIN_PROMPTS: dict[str, PromptTemplate] = {
    "sst": PromptTemplate("Is this review positive or negative?", "{a}"),
    "sst2": PromptTemplate("Is this review positive or negative?", "{a}"),
    "cfimdb": PromptTemplate("Is this review positive or negative?", "{a}"),
    "quora": PromptTemplate("Does the first question paraphrase the second?", _PAIR_CONTEXT),
    "qqp": PromptTemplate("Does the first question paraphrase the second?", _PAIR_CONTEXT),
    "mrpc": PromptTemplate("Does the first sentence paraphrase the second?", _PAIR_CONTEXT),
    "sts": PromptTemplate("Is the first sentence semantically equivalent to the second?", _PAIR_CONTEXT),
    "stsb": PromptTemplate("Is the first sentence semantically equivalent to the second?", _PAIR_CONTEXT),
    "cola": PromptTemplate("Is this sentence grammatical?", "{a}"),
    "rte": PromptTemplate("Does the first sentence entail the second?", _PAIR_CONTEXT),
    "mnli": PromptTemplate("Does the first sentence entail the second?", _PAIR_CONTEXT),
}


def check_template(template: PromptTemplate, is_pair: bool, where: str) -> None:
    """Raise MtbertError unless the template uses only {a} (and {b} for a pair task), and all of them."""
    allowed = {"a", "b"} if is_pair else {"a"}
    used = set()
    for part in ("question", "context"):
        for name in PLACEHOLDER.findall(getattr(template, part)):
            if name not in allowed:
                why = ("a single-sentence task has only {a}" if name == "b"
                       else "placeholders are {a} (first sentence) and {b} (second sentence)")
                raise MtbertError(f"{where}.{part}: unknown placeholder '{{{name}}}'; {why}")
            used.add(name)
    for name in sorted(allowed - used):
        raise MtbertError(f"{where}.context: the template never uses {{{name}}}, so that sentence would be "
                          f"dropped; write it into the context")


def render(template: PromptTemplate, a: str, b: str = "") -> tuple[str, str]:
    """(question, context) for one example with sentences a and b."""
    values = {"a": a, "b": b}

    def fill(text: str) -> str:
        return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)

    return fill(template.question), fill(template.context)
