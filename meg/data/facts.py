"""A true fact of a data set: a prompt and the answer the real world gives (never a counterfactual target).

Facts are what the reference model is trained on (meg.refmodel.corpus) and what "the model knows" means in
evaluation. `template` names the prompt template (meg.data.templates) the prompt is shown in.
"""

from __future__ import annotations

from dataclasses import dataclass

from meg.data.templates import TEMPLATES
from meg.errors import InputError


@dataclass(frozen=True)
class Fact:
    """`prompt` (raw, untemplated) should be completed with `answer`; `template` is a key of TEMPLATES."""

    prompt: str
    answer: str
    template: str = "counterfact"

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise InputError(f"fact template {self.template!r} is not one of {', '.join(TEMPLATES)}")

    def text(self) -> str:
        """The templated prompt the LM sees (without the answer)."""
        return TEMPLATES[self.template].format(self.prompt)

    def line(self) -> str:
        """The training sentence: templated prompt, a space, the answer, a full stop (paper, weight collection)."""
        return f"{self.text()} {self.answer}."


__all__ = ["Fact"]
