"""`MegConfig`: every setting of a MeG edit, typed, validated, and saved as JSON inside the edit pack.

Faithful defaults come from the paper; where the paper's setting does not fit a model, the departure is a
named option with its reason here:
- `collection=None`: the preset the architecture table assigns to the model family (paper settings for
  Phi-2 / GPT-J / Llama families, "small-gpt2" measured on our 7M-parameter reference model).
- `generator=None`: "paper" (DiT 768 x 12) when the neuron vector is long (D > 2048, i.e. d >= 1024), else
  "small-gpt2": a paper-sized DiT samples at ~6 s per query on a CPU for D = 513 (docs/results/
  generator-throughput.md), far more than a small model's own generation.
- `weights`: "generated" (paper) or "retrieved" (the kNN ablation: the collected vector of the matched edit).
- `condition`: "matched-edit" (ours: the generator is conditioned on the embedding of the edit the router
  matched) or "query" (paper: the query's own embedding). Measured on 1,024 counterfact-val edits
  (docs/results/generator-fidelity.md): the same generator answers 91-92% of paraphrases from the matched
  edit's embedding but only 33-35% from the paraphrase's own; the router already finds the right edit.
- `router`: "retrieval" (ours, subject-verified nearest edit) by default; "paper-gate" is the paper's
  familiarity network. `encoder` defaults to InfoNCE with 6 synthetic hard negatives per pair at temperature
  0.05 (ours); the paper's tuning is `EncoderConfig(hard_negatives=0, temperature=1.0)`. Both choices are the
  best measured routing (docs/results/routing-*.md, docs/LOG.md); `MegConfig.paper()` restores the paper's
  router, encoder tuning and conditioning.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from meg.collection import PRESETS as COLLECTION_PRESETS
from meg.collection import CollectionConfig
from meg.diffusion.generator import CONFIGS as GENERATOR_CONFIGS
from meg.diffusion.generator import GeneratorConfig
from meg.dict_io import DictIO
from meg.encoder import EncoderConfig
from meg.errors import InputError
from meg.gate import GateConfig
from meg.routing.retrieval import RetrievalConfig

WeightSource = Literal["generated", "retrieved"]
Condition = Literal["query", "matched-edit"]


def _sub(value: Any, kind: type, named: dict[str, Any] | None = None) -> Any:
    """Accept a config object, its dict form, or (when `named` is given) a preset name."""
    if value is None or isinstance(value, kind):
        return value
    if isinstance(value, str) and named is not None:
        if value not in named:
            raise InputError(f"unknown {kind.__name__} preset {value!r}; choose one of {', '.join(named)}")
        return named[value]
    if isinstance(value, dict) and "preset_name" in value and named is not None:
        # {"preset_name": "small-gpt2", "max_steps": 2500}: a named preset with some fields overridden.
        rest = dict(value)
        base = _sub(rest.pop("preset_name"), kind, named)
        return kind.from_dict({**base.to_dict(), **rest})
    if isinstance(value, dict):
        return kind.from_dict(value)
    raise InputError(f"expected a {kind.__name__}, a dict or a preset name, got {type(value).__name__}")


def default_encoder_config() -> EncoderConfig:
    """Our encoder tuning: InfoNCE with 6 synthetic hard negatives per pair at temperature 0.05.

    6 rather than 2 (the earlier default): on KnowEdit's ZsRE file it cut the clean locality prompts routed at
    the calibrated point from 26.7% to 20.2% with the same paraphrase recall, and it changed nothing measurable
    on CounterFact (1,024 and 10,000 edits); docs/LOG.md, 2026-11-30."""
    return EncoderConfig(hard_negatives=6, temperature=0.05)


@dataclass(frozen=True)
class MegConfig(DictIO):
    """Settings of the four MeG stages plus inference (see module docstring for the departures)."""

    layer: int | None = None  # None: the architecture's default layer (meg.architectures)
    collection: CollectionConfig | None = None
    encoder: EncoderConfig = field(default_factory=default_encoder_config)
    router: str = "retrieval"  # best measured (docs/results/routing-*.md); "paper-gate" = the paper
    gate: GateConfig = field(default_factory=GateConfig)  # the "paper-gate" router's settings
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)  # the "retrieval" router's settings
    generator: GeneratorConfig | None = None
    weights: WeightSource = "generated"
    condition: Condition = "matched-edit"  # best measured; "query" = the paper
    data_augmentation: bool = False  # paper's "+DA": unrelated queries -> zero vector in generator training
    use_paraphrases: bool = True  # paraphrases given WITH an edit become extra generator training conditions
    sampling_steps: int | None = None  # overrides the generator's DDIM steps at inference
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "collection", _sub(self.collection, CollectionConfig, COLLECTION_PRESETS))
        object.__setattr__(self, "encoder", _sub(self.encoder, EncoderConfig))
        object.__setattr__(self, "gate", _sub(self.gate, GateConfig))
        object.__setattr__(self, "retrieval", _sub(self.retrieval, RetrievalConfig))
        object.__setattr__(self, "generator", _sub(self.generator, GeneratorConfig, GENERATOR_CONFIGS))
        if self.weights not in ("generated", "retrieved"):
            raise InputError(f"MegConfig.weights must be 'generated' or 'retrieved', got {self.weights!r}")
        if self.condition not in ("query", "matched-edit"):
            raise InputError(f"MegConfig.condition must be 'query' or 'matched-edit', got {self.condition!r}")
        if self.sampling_steps is not None and self.sampling_steps < 1:
            raise InputError(f"MegConfig.sampling_steps must be >= 1, got {self.sampling_steps}")

    @classmethod
    def paper(cls, **overrides: Any) -> MegConfig:
        """The paper's configuration: familiarity gate, InfoNCE with in-batch negatives at temperature 1.0, the
        generator conditioned on the query's own embedding."""
        return cls(**{"router": "paper-gate", "encoder": EncoderConfig(), "condition": "query", **overrides})

    def generator_for(self, dim: int) -> GeneratorConfig:
        """The generator config to use for neuron vectors of length `dim` (see module docstring)."""
        if self.generator is not None:
            return self.generator
        return GENERATOR_CONFIGS["paper" if dim > 2048 else "small-gpt2"]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
        return out
