"""The routing verifier: its training set, its use in the retrieval router, and its trained state in a pack."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import PSEUDO_PAIRS

from meg.requests import EditRequest, NegativePair, PseudoPair
from meg.routing import RetrievalConfig, RoutingData
from meg.routing.retrieval import RetrievalRouter
from meg.routing.verifier import SubjectVerifier, VerifierConfig, linked_templates, training_examples

PAIRS = [PseudoPair("Where was Ada born?", "In which city was Ada born?", "Ada"),
         PseudoPair("The mother tongue of Bo Li is", "Bo Li's native language is", "Bo Li"),
         PseudoPair("Who employs Cy Twombly?", "Cy Twombly works for", "Cy Twombly")]
NEGATIVES = [NegativePair("The occupation of Dee Dee is", "The gender of Dee Dee is", "Dee Dee")]


def test_training_examples_pair_positives_both_ways_and_add_same_subject_negatives():
    examples = training_examples(VerifierConfig(), PAIRS, NEGATIVES)
    positives = {(a, b) for a, b, y in examples if y == 1.0}
    assert ("Where was Ada born?", "In which city was Ada born?") in positives
    assert ("In which city was Ada born?", "Where was Ada born?") in positives
    negatives = [(a, b) for a, b, y in examples if y == 0.0]
    assert ("The occupation of Dee Dee is", "The gender of Dee Dee is") in negatives
    # Synthetic negatives keep the pair's subject and take another pair's template.
    assert any(a == "Where was Ada born?" and "Ada" in b and b != "In which city was Ada born?" for a, b in negatives)
    # Question-style pairs also get the shipped declarative templates with their own subject.
    assert ("Where was Ada born?", "The gender of Ada is") in negatives
    assert examples == training_examples(VerifierConfig(), PAIRS, NEGATIVES)  # seeded


def test_templates_linked_by_a_pair_are_one_relation_and_never_each_others_negative():
    reworded = [PseudoPair("The occupation of Ann Ito is", "The profession of Ann Ito is", "Ann Ito"),
                PseudoPair("The profession of Bo Chen is", "Bo Chen works as a", "Bo Chen"),
                PseudoPair("Cy Dorn was born in", "Cy Dorn's birthplace is", "Cy Dorn")]
    relation = linked_templates(reworded)
    assert relation["The occupation of {} is"] == relation["The profession of {} is"] == relation["{} works as a"]
    assert relation["{} was born in"] != relation["The occupation of {} is"]
    # The verifier does not link them (measured neutral, docs/LOG.md): another template is another relation.
    unlinked = {(a, b) for seed in range(20) for a, b, y in training_examples(VerifierConfig(seed=seed), reworded, [])
                if y == 0.0}
    assert ("The profession of Bo Chen is", "The occupation of Bo Chen is") in unlinked


class FakeVerifier:
    """Scores 1 when the query contains the edit prompt's key word (its last word unless listed), else 0."""

    KEY = {"Who taught Ada?": "taught"}

    def score(self, edit_prompts, queries):
        words = [self.KEY.get(e, e.split()[-1].strip("?")) for e in edit_prompts]
        return torch.tensor([float(w in q) for w, q in zip(words, queries)])

    def tuned_state(self):
        return {"w": torch.ones(2)}


def test_router_scores_subject_candidates_with_the_verifier():
    prompts, subjects = ["Where was Ada born?", "Who taught Ada?"], ["Ada", "Ada"]
    router = RetrievalRouter(RetrievalConfig(), torch.eye(2), subjects, prompts, {"subject": 0.5, "free": 2.0},
                             verifier=FakeVerifier())
    queries = ["Ada was born in", "Ada was taught by", "Ada died in"]
    routes = router.route(queries, torch.eye(3, 2))
    assert routes.routed.tolist() == [True, True, False]  # all name Ada; the verifier tells the facts apart
    assert routes.edit[:2].tolist() == [0, 1]
    assert set(router.state_dict()) == {"verifier.w"}


class NeverVerifier(FakeVerifier):
    def score(self, edit_prompts, queries):
        return torch.zeros(len(queries))


def test_a_repeat_of_an_edit_prompt_is_routed_whatever_the_verifier_says():
    router = RetrievalRouter(RetrievalConfig(), torch.eye(2), ["Ada", "Ada"], ["Where was Ada born?", "Who taught Ada?"],
                             {"subject": 0.5, "free": 2.0}, verifier=NeverVerifier())
    routes = router.route(["who taught  ada?", "Who taught Ada then?"], torch.eye(2).flip(0))
    assert routes.routed.tolist() == [True, False] and routes.edit[0] == 1
    assert set(router.state_dict()) == {"verifier.w"}


def test_router_calibrates_on_verifier_scores(monkeypatch):
    pairs = [PseudoPair(f"Where was P{i} born?", f"P{i} was born in which place, born?", f"P{i}") for i in range(30)]
    data = RoutingData(["Where was Ada born?"], torch.eye(1, 4), ["Ada"], [], torch.zeros(0, 4), pairs,
                       encode=lambda texts: torch.nn.functional.normalize(torch.ones(len(texts), 4), dim=1))
    import meg.routing.retrieval

    monkeypatch.setattr(meg.routing.retrieval, "trained_verifier",
                        lambda *args, **kwargs: (FakeVerifier(), {"examples": 0}))
    router = RetrievalRouter.fit(data, RetrievalConfig(verifier=VerifierConfig()))
    assert router.thresholds["subject"] == 1.0  # every held-out paraphrase scores 1 with the fake verifier
    assert router.calibration["verifier_training"] == {"examples": 0}


class GradedVerifier(FakeVerifier):
    """Probability = the share of the edit prompt's words found in the query (a graded score to rank)."""

    def score(self, edit_prompts, queries):
        return torch.tensor([sum(w in q.lower() for w in e.lower().split()) / len(e.split())
                             for e, q in zip(edit_prompts, queries)])


# 40 held-out pairs whose paraphrases differ in length, for calibrations on a random encoder.
BORN_PAIRS = [PseudoPair(f"Where was P{i} born?", f"P{i} was born where{' then' * (i % 4)}?", f"P{i}")
              for i in range(40)]


def _random_encoder(seed: int):
    """An `encode` giving each distinct text a fixed random unit vector (8-d), drawn in order of first use."""
    gen = torch.Generator().manual_seed(seed)
    table: dict[str, torch.Tensor] = {}

    def encode(texts):
        for t in texts:
            table.setdefault(t, torch.nn.functional.normalize(torch.randn(8, generator=gen), dim=0))
        return torch.stack([table[t] for t in texts])

    return encode


def _graded(monkeypatch, seed: int, prompts: list[str], subjects: list[str], verifier: type = GradedVerifier):
    """(routing data for `prompts` embedded by a seeded random encoder, BORN_PAIRS held out, the encoder), with
    `verifier` standing in for the trained one."""
    import meg.routing.retrieval

    encode = _random_encoder(seed)
    data = RoutingData(prompts, encode(prompts), subjects, [], torch.zeros(0, 8), BORN_PAIRS, encode=encode)
    monkeypatch.setattr(meg.routing.retrieval, "trained_verifier", lambda *args, **kwargs: (verifier(), {}))
    return data, encode


def _graded_config(verifier_weight: float) -> RetrievalConfig:
    return RetrievalConfig(verifier=VerifierConfig(), verifier_weight=verifier_weight, matched_calibration=False,
                           masked_weight=0)


def test_blended_score_is_the_mean_rank_of_verifier_and_cosine_among_held_out_pairs(monkeypatch):
    """verifier_weight 0.5: each score becomes its rank (weighted CDF) among the held-out pairs and the two
    ranks are averaged; the threshold keeps `paraphrase_recall` of the pairs on that scale; the lookup tables
    travel in the router state."""
    import meg.routing.retrieval

    prompts = ["Where was Ada born?"]
    data, encode = _graded(monkeypatch, 0, prompts, ["Ada"])
    config = _graded_config(0.5)
    router = RetrievalRouter.fit(data, config)
    ranks = router._rank("verifier", router.reference["verifier"])
    assert ranks[-1] == 1.0 and bool((ranks[1:] >= ranks[:-1]).all())  # a CDF over the pairs' own scores
    blended = router._blend(router.reference["cosine"][:1], router.reference["verifier"][-1:])
    lowest_cosine_rank = float(router._rank("cosine", router.reference["cosine"][:1]))
    assert float(blended) == pytest.approx(0.5 * 1.0 + 0.5 * lowest_cosine_rank)
    assert 0 < router.thresholds["subject"] < 1
    state = router.state_dict()
    assert {"reference.cosine", "reference.cosine_cdf", "reference.verifier", "reference.verifier_cdf"} <= set(state)
    query = ["Ada was born where?"]

    class Loadable(GradedVerifier):  # stands in for the real verifier class when the pack is read back
        def __init__(self, config, device=None):
            pass

        def load_tuned_state(self, state):
            assert set(state) == {"w"}

    monkeypatch.setattr(meg.routing.retrieval, "SubjectVerifier", Loadable)
    again = RetrievalRouter.from_state(config, router.fitted(), state, data.edit_embeddings,
                                       [EditRequest(prompts[0], "London", "Ada")], encode)
    assert torch.equal(again.scores(query, encode(query))["subject_sim"],
                       router.scores(query, encode(query))["subject_sim"])


def test_retrieval_config_round_trips_the_verifier_settings():
    config = RetrievalConfig(verifier=VerifierConfig(epochs=1))
    again = RetrievalConfig.from_dict(config.to_dict())
    assert again == config and isinstance(again.verifier, VerifierConfig)


@pytest.mark.integration
def test_trained_verifier_state_loads_into_a_fresh_one():
    config = VerifierConfig(epochs=1)
    pairs = [PseudoPair(q, p, s) for q, p, s in PSEUDO_PAIRS]
    verifier = SubjectVerifier(config)
    log = verifier.train(pairs, NEGATIVES, progress=False)
    assert log["positives"] >= 2 and len(log["epoch_losses"]) == 1
    fresh = SubjectVerifier(config)
    fresh.load_tuned_state(verifier.tuned_state())
    first, second = [p.question for p in pairs[:4]], [p.paraphrase for p in pairs[:4]]
    assert torch.equal(verifier.score(first, second), fresh.score(first, second))
    assert all(n.startswith(("bert.encoder.layer.4", "bert.encoder.layer.5", "bert.pooler", "classifier"))
               for n in verifier.tuned_state())


def test_a_verifier_shipped_for_the_same_inputs_is_loaded_not_trained(tmp_path, monkeypatch):
    from dataclasses import asdict

    import meg.data.defaults
    from meg import files
    from meg.files import digest
    from meg.routing.verifier import trained_verifier

    config = VerifierConfig(epochs=1)
    key = digest(config.to_dict(), [asdict(p) for p in PAIRS], [asdict(n) for n in NEGATIVES])
    shipped = SubjectVerifier(config)
    files.save_tensors(tmp_path / files.TRAINED_VERIFIER.format(key=key), shipped.tuned_state())
    monkeypatch.setattr(meg.data.defaults, "assets_dir", lambda: tmp_path)
    verifier, log = trained_verifier(config, PAIRS, NEGATIVES, work=None, progress=False)
    assert log == {"resumed_from": files.TRAINED_VERIFIER.format(key=key)}
    first, second = [p.question for p in PAIRS], [p.paraphrase for p in PAIRS]
    assert torch.equal(verifier.score(first, second), shipped.score(first, second))


def test_a_verifier_trained_in_a_work_directory_is_stored_there_and_reused(tmp_path, monkeypatch):
    from meg.routing.verifier import trained_verifier

    calls = []
    monkeypatch.setattr(SubjectVerifier, "train", lambda self, pairs, negatives, progress=True: calls.append(1) or {})
    config = VerifierConfig(epochs=1)
    _, log = trained_verifier(config, PAIRS, NEGATIVES, work=tmp_path, progress=False)
    assert log == {} and len(list(tmp_path.glob("verifier-*.safetensors"))) == 1
    _, again = trained_verifier(config, PAIRS, NEGATIVES, work=tmp_path, progress=False)
    assert "resumed_from" in again and calls == [1]


def test_the_verifier_reads_only_rows_whose_route_it_can_change(monkeypatch):
    """Routing skips the verifier where the blended score's bounds (verdict ranked 0 or 1) already decide the row;
    the routes are those of the full computation (issue 19)."""
    seen: list[int] = []

    class Counting(GradedVerifier):
        def score(self, edit_prompts, queries):
            seen.append(len(queries))
            return super().score(edit_prompts, queries)

    data, encode = _graded(monkeypatch, 1, [f"Where was Q{i} born?" for i in range(30)], [f"Q{i}" for i in range(30)],
                           Counting)
    queries = [f"Q{i} was born where?" if i % 2 else f"Q{i} taught whom?" for i in range(30)]
    embeddings = encode(queries)
    for veto in (None, 0.01):  # with the veto (the default) a high cosine still needs the verifier's reading
        router = RetrievalRouter.fit(data, replace(_graded_config(0.5), verifier_veto=veto))
        router.thresholds["subject"] = 0.2  # low, as calibrated on real pairs (0.085 on CounterFact 1,024)
        seen.clear()
        full = router.decide(router.scores(queries, embeddings), router.thresholds["subject"],
                             router.thresholds["free"])
        assert seen == [30]
        seen.clear()
        routes = router.route(queries, embeddings)
        assert torch.equal(routes.routed, full.routed) and torch.equal(routes.edit, full.edit)
        assert 0 < full.routed.sum() < 30 and (veto is not None or sum(seen) < 30)  # some decided by cosine alone
        routes, _ = router.route_texts(queries, encode)
        assert torch.equal(routes.routed, full.routed) and torch.equal(routes.edit, full.edit)


def test_a_verifier_veto_stops_a_high_cosine_the_blend_would_route(monkeypatch):
    """verifier_veto: the blend lets a near-identical cosine route whatever the verifier says (KnowEdit's "the
    father of X" against the edit "the mother of X", docs/LOG.md 2026-12-01); with the veto, a candidate whose
    verdict is under the held-out pairs' quantile is never routed, and the rows are not decided by cosine alone."""
    data, encode = _graded(monkeypatch, 2, ["Where was Ada born?"], ["Ada"])
    config = replace(_graded_config(0.3), verifier_veto=None)
    plain = RetrievalRouter.fit(data, config)
    vetoing = RetrievalRouter.fit(data, replace(config, verifier_veto=0.05))
    veto = vetoing.thresholds["verifier_veto"]
    assert "verifier_veto" not in plain.thresholds and 0 < veto <= 1
    # The veto is calibrated on the held-out pairs' verdicts: at most 5% of them (by weight) fall under it.
    verdicts = GradedVerifier().score([p.question for p in BORN_PAIRS], [p.paraphrase for p in BORN_PAIRS])
    assert float((verdicts < veto).double().mean()) <= 0.05
    # A query whose text is the edit's embedding (cosine 1) but shares no word with it: the blend routes it.
    odd = ["Ada zzz"]
    on_edit = data.edit_embeddings
    assert plain.route(odd, on_edit).routed.tolist() == [True]
    assert vetoing.route(odd, on_edit).routed.tolist() == [False]
    assert vetoing.route(["Ada was born where?"], encode(["Ada was born where?"])).routed.tolist() == \
        plain.route(["Ada was born where?"], encode(["Ada was born where?"])).routed.tolist()
