"""What both bad-input corpora share: a case on the command line, the one-line error check, and the stand-ins
that make loading a model or fitting an internal error (so a passing case provably failed before them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures" / "format1"
MODEL = FIXTURES / "model"  # a tiny GPT-2 (64 positions) the fixture packs were fitted on


@dataclass
class Case:
    """One CLI case: arguments (`{w}` is the workspace, `{model}` the tiny model), what the message must name, its
    class."""

    kind: str
    args: list[str]
    culprit: str
    before_model: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def argv(self, w: Path) -> list[str]:
        return [a.replace("{w}", str(w)).replace("{model}", str(MODEL)) for a in self.args]


def check_one_line_error(result, culprit: str, code: int = 2, anywhere: bool = False) -> str:
    """Exit `code`, no traceback, exactly one `error:` line, naming `culprit` (in that line, or with `anywhere`
    in any line of stderr); returns the error line."""
    output = result.output
    assert "Traceback" not in output, output
    assert result.exit_code == code, f"exit {result.exit_code}: {output}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    assert culprit in errors[0] or (anywhere and culprit in result.stderr), output
    return errors[0]


def refuse_models(monkeypatch) -> None:
    """Loading a model, fitting or changing a pack raises an internal error (exit 1 on the command line)."""
    import meg.editor
    import meg.evaluation.runner
    import meg.models

    def refuse(*args, **kwargs):
        raise RuntimeError("a model was loaded before the input was checked")

    for module in (meg.models, meg.evaluation.runner):
        monkeypatch.setattr(module, "load_causal_lm", refuse)
    for name in ("fit", "add", "remove", "replace"):
        monkeypatch.setattr(meg.editor.MegEditor, name, refuse)
