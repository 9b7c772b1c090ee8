"""`MegConfig`: every setting of a MeG edit, typed, validated, and saved inside the edit pack.

Class defaults are the shipped defaults; `MegConfig.paper()` is the paper's configuration. Where the paper's
setting does not fit a model, the departure is a named option with its reason here:
- `collection=None`: the preset the architecture table assigns to the model family (paper settings for
  Phi-2 / GPT-J / Llama families, "small-gpt2" measured on our 7M-parameter reference model).
- `generator=None`: "paper" (DiT 768 x 12) when the neuron vector is long (D > 2048, i.e. d >= 1024), else
  "small-gpt2": a paper-sized DiT samples at ~6 s per query on a CPU for D = 513 (docs/results/
  generator-throughput.md), far more than a small model's own generation.
- `weights`: "generated" (paper), "retrieved" (the kNN ablation: the collected vector of the matched edit), or
  "auto" (default): the generator is trained as the paper does, and kept when it reproduces the collected vectors
  (its stop criterion met within `meg.diffusion.train.HOLDS_FACTOR`); otherwise the pack uses the collected
  vectors and says so. Measured (docs/LOG.md, 2026-12-01): the "small-gpt2" DiT holds 256-2,048 CounterFact
  vectors (relative L2 0.08-0.29, Score 96) but not 10,000 (relative L2 1.10 after its 1,500 steps, Score 21.2
  generated against knn's at the same edits); the pack's config records the source that was used.
- `condition`: "matched-edit" (ours: the generator is conditioned on the embedding of the edit the router
  matched) or "query" (paper: the query's own embedding). Measured on 1,024 counterfact-val edits
  (docs/results/generator-fidelity.md): the same generator answers 91-92% of paraphrases from the matched
  edit's embedding but only 33-35% from the paraphrase's own; the router already finds the right edit.
- `vectors_per`: "edit" (ours) or "query" (paper). Conditioned on the matched edit, a query's vector depends on the
  query only through its starting noise; seeding that noise by the edit makes the vector a function of the edit,
  sampled once per edit and then looked up (docs/results/inference-cost.md: sampling was ~20% of a routed query's
  time on the reference model, and a paper-sized DiT costs several base decodes per query at d >= 1024). Packs
  saved before this setting existed load with "query", the behaviour they were made with.
- `generator_vectors`: "all" (ours) or "successful". The paper knows no failed collection; here a neuron may stop
  short of its target (28% collected on KnowEdit WikiData counterfact on the reference model, 99% on CounterFact).
  Such a vector still raises the target's probability (Rel-TF 50 on those edits with knn), but a generator taught
  only the successful vectors answers them from nothing (Rel-TF 2): meg Score 42.2 against knn's 53.4 there.
  Taught every vector, it scores 53.4 (the generator no longer holds them, so "auto" serves the vectors) and
  96.46 against 96.28 on CounterFact 1,024 (docs/LOG.md, 2026-12-02). Packs saved before this setting existed
  load with "successful", the generator they were made with.
- `router`: "retrieval" (ours, subject-verified nearest edit) by default; "paper-gate" is the paper's
  familiarity network. The encoder's defaults (EncoderConfig) are ours too. Both are the best measured routing
  (docs/results/routing-*.md, docs/LOG.md).
A pack stores its config resolved (layer, collection and generator filled in), so it records what was run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from meg.collection import PRESETS as COLLECTION_PRESETS
from meg.collection import CollectionConfig
from meg.diffusion.generator import CONFIGS as GENERATOR_CONFIGS
from meg.diffusion.generator import GeneratorConfig
from meg.encoder import EncoderConfig
from meg.errors import InputError
from meg.gate import GateConfig
from meg.routing import ROUTERS, RetrievalConfig
from meg.settings import Rules, Settings, setting

WeightSource = Literal["generated", "retrieved", "auto"]
Condition = Literal["query", "matched-edit"]
VectorsPer = Literal["edit", "query"]
GeneratorVectors = Literal["successful", "all"]


def _named(value: Any, kind: type, presets: dict[str, Any]) -> Any:
    """A preset name, or {"preset_name": name, field: override, ...}, as a config object; anything else as is."""
    if isinstance(value, str):
        if value not in presets:
            raise InputError(f"unknown {kind.__name__} preset {value!r}; choose one of {', '.join(presets)}")
        return presets[value]
    if isinstance(value, dict) and "preset_name" in value:
        rest = dict(value)
        base = _named(rest.pop("preset_name"), kind, presets)
        return kind.from_dict({**base.to_dict(), **rest})
    return value


@dataclass(frozen=True)
class MegConfig(Settings):
    """Settings of the four MeG stages plus inference (see module docstring for the departures)."""

    layer: int | None = setting(None, "FFN layer of the neuron; null: the architecture's default (meg.architectures)")
    collection: CollectionConfig | None = setting(None, "stage 3, neuron collection; null: the architecture's "
                                                  "preset (meg.collection.PRESETS); a preset name is accepted")
    encoder: EncoderConfig = setting(factory=EncoderConfig, help="stage 1, the query encoder")
    router: str = setting("retrieval", "retrieval (ours, best measured) or paper-gate (the paper's familiarity gate)")
    gate: GateConfig = setting(factory=GateConfig, help="the paper-gate router's settings (stage 2)")
    retrieval: RetrievalConfig = setting(factory=RetrievalConfig, help="the retrieval router's settings")
    generator: GeneratorConfig | None = setting(None, "stage 4, the diffusion generator; null: chosen by the neuron "
                                                "vector's length (meg.diffusion.generator.CONFIGS); a name is accepted")
    weights: WeightSource = setting("auto", "generated (paper), retrieved (the matched edit's collected vector), or "
                                    "auto: generated when the generator reproduces the collected vectors, else retrieved")
    condition: Condition = setting("matched-edit", "the generator's condition: matched-edit (ours) or query (paper)")
    vectors_per: VectorsPer = setting("edit", "edit (ours): with condition matched-edit, each edit's vector is sampled "
                                      "once, from noise seeded by the edit, and reused; query (paper): every query "
                                      "draws its own noise")
    data_augmentation: bool = setting(False, "the paper's +DA: unrelated queries -> zero vector in generator training")
    generator_vectors: GeneratorVectors = setting("all", "the collected vectors the generator learns: all (ours: "
                                                  "unfinished ones too, each edit's best vector, the one knn serves) "
                                                  "or successful (only neurons that reached their target)")
    seed: int = setting(0, "seed of the pack's sampling noise")

    def __post_init__(self) -> None:
        object.__setattr__(self, "collection", _named(self.collection, CollectionConfig, COLLECTION_PRESETS))
        object.__setattr__(self, "generator", _named(self.generator, GeneratorConfig, GENERATOR_CONFIGS))
        super().__post_init__()

    def rules(self) -> Rules:
        return {"layer": (self.layer is None or self.layer >= 0, ">= 0 or null"),
                "router": (self.router in ROUTERS, f"one of: {', '.join(ROUTERS)}"), "seed": (self.seed >= 0, ">= 0")}

    @classmethod
    def paper(cls, **overrides: Any) -> MegConfig:
        """The paper's configuration: familiarity gate, InfoNCE with in-batch negatives at temperature 1.0, the
        generator conditioned on the query's own embedding."""
        return cls(**{"router": "paper-gate", "encoder": EncoderConfig.paper(), "condition": "query",
                      "weights": "generated", "vectors_per": "query", **overrides})

    def router_config(self) -> GateConfig | RetrievalConfig:
        """The settings of the router this config selects."""
        return self.gate if self.router == "paper-gate" else self.retrieval

    def generator_for(self, dim: int) -> GeneratorConfig:
        """The generator config to use for neuron vectors of length `dim` (see module docstring)."""
        if self.generator is not None:
            return self.generator
        return GENERATOR_CONFIGS["paper" if dim > 2048 else "small-gpt2"]

    def resolved(self, layer: int, collection: CollectionConfig, dim: int) -> MegConfig:
        """This config with the neuron's layer, the collection settings and (for generated weights) the generator
        filled in: what a pack stores."""
        generator = self.generator_for(dim) if self.weights != "retrieved" else self.generator
        return replace(self, layer=layer, collection=collection, generator=generator)
