"""Prompt templates per dataset: how a raw query of each data set is shown to the LM.

CounterFact and KnowEdit prompts are sentence prefixes and are shown as they are. ZsRE prompts are questions;
the paper (and its research code, for GPT-J) wraps them in a question-answer template so that a base model
answers in a few words.
"""

from __future__ import annotations

from meg.errors import InputError
from meg.prompts import PromptTemplate

ZSRE_TEMPLATE = "Q: Answer the following question in less than 5 words. {prompt}\nA:"

TEMPLATES: dict[str, PromptTemplate] = {
    "counterfact": PromptTemplate("{prompt}"),
    "zsre": PromptTemplate(ZSRE_TEMPLATE),
    "knowedit": PromptTemplate("{prompt}"),
    "jsonl": PromptTemplate("{prompt}"),
}


def template_for(dataset: str, override: str | None = None) -> PromptTemplate:
    """The template of `dataset`, or `override` (a template text with one '{prompt}') when given.

    `override` may also name another data set's template (e.g. 'zsre' for a JSONL file of questions).
    """
    if override is not None:
        if override in TEMPLATES:
            return TEMPLATES[override]
        return PromptTemplate(override)
    if dataset not in TEMPLATES:
        raise InputError(f"no prompt template for data set {dataset!r}; valid names: {', '.join(TEMPLATES)}")
    return TEMPLATES[dataset]


__all__ = ["TEMPLATES", "ZSRE_TEMPLATE", "template_for"]
