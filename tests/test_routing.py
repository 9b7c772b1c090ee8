"""Routers on synthetic embeddings where the right answer is known (no language model, no encoder)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from meg.errors import InputError
from meg.gate import GateConfig
from meg.requests import EditRequest, NegativePair, PseudoPair
from meg.routing import ROUTERS, RetrievalConfig, RoutingData, router_class
from meg.routing.retrieval import RetrievalRouter, conformal_threshold, other_relations, weighted_quantile
from meg.routing.subjects import SubjectIndex, focus, infer_subject, trigrams, without_subject

SUBJECTS = ["BBC One", "Danielle Darrieux", "Toko Yasuda"]
COSINE = RetrievalConfig(verifier=None)  # routers fitted here score by cosine: no cross-encoder to train
PROMPTS = ["BBC One, by", "The mother tongue of Danielle Darrieux is", "Toko Yasuda plays the"]


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def fake_encoder(dim: int = 16, seed: int = 0):
    """Texts -> fixed random unit vectors (the same text always gets the same vector)."""
    table: dict[str, torch.Tensor] = {}

    def encode(texts):
        rows = []
        for text in texts:
            key = text.lower()
            if key not in table:
                table[key] = unit(torch.randn(dim, generator=torch.Generator().manual_seed(hash(key) % 2**31)))
            rows.append(table[key])
        return torch.stack(rows)

    return encode


def test_subject_index_matches_whole_words_case_insensitively():
    index = SubjectIndex(SUBJECTS + ["Apple"], PROMPTS + ["Apple A5 was created by"])
    assert index.edits_named_in("bbc one is owned by") == [0]
    assert index.edits_named_in("BBC Oneida, by") == []  # a longer word is not the subject
    assert index.edits_named_in("Pineapple farms") == []
    assert index.edits_named_in("Apple and Toko Yasuda") == [2, 3]


def test_approximate_naming_is_a_fallback_for_bent_subjects():
    subjects = ["Derek Whitehead", "Republic of Mahabad", "BBC One"]
    prompts = ["Derek Whitehead plays for", "The last year of Republic of Mahabad is", "BBC One, by"]
    exact, approximate = SubjectIndex(subjects, prompts), SubjectIndex(subjects, prompts, min_coverage=0.8)
    bent = ["What was the name of the Derek Whiteheads team?", "What is the last year of the Mahabad Republic?"]
    assert exact.named_in(bent) == [[], []]
    assert approximate.named_in(bent) == [[0], [1]]
    assert approximate.named_in(["BBC Radio, by", "Whitehouse"]) == [[], []]  # 3 of 6 trigrams; too few
    variants = SubjectIndex(["Renault 5"], ["Renault 5 is created by"], min_coverage=0.8)
    assert variants.named_in(["Renault 12 is created by", "the Renault 5's maker"]) == [[], [0]]  # every word counts
    # a query that names some subject exactly gets no approximate candidates
    assert approximate.edits_named_in("BBC One and Derek Whiteheads") == [2]
    # connectors need not survive the paraphraser: only the name words are checked one by one
    dropped = SubjectIndex(["Charlotte of Schaumburg-Lippe"], ["Who was Charlotte of Schaumburg-Lippe's mother?"], 0.8)
    assert dropped.named_in(["What was Charlotte the mother's name Schaumburg-Lippe?"]) == [[0]]
    assert trigrams("Java") == {" ja", "jav", "ava", "va "}


def test_approximate_naming_bends_a_word_end_not_its_start():
    """The false namings trigram coverage over the whole query made (docs/LOG.md, 2026-12-01): each subject word
    must be bent into one query word with the same start, at most two letters longer."""
    subjects = ["Tizen", "Langu", "D♭", "Re!", "Thor", "Mechthild", "Posio"]
    index = SubjectIndex(subjects, [f"{s} is" for s in subjects], min_coverage=0.8)
    false = ["Ralph Steinman, who is a citizen of", "The original language of Pee Mak is",
             "Clifford D. Simak passed away in", "Re di Roma metro station is located in",
             "who is the author of delta of venus", "The position of Posi is"]
    assert index.named_in(false) == [[]] * len(false)
    assert index.named_in(["Who was Mechthildi's Austrian father?", "Tizens run on", "the Posioo lake"]) == [[5], [0], [6]]


def test_each_candidate_is_compared_with_the_sentence_naming_its_own_subject():
    encode = fake_encoder()
    subjects, prompts = ["Rome", "Howard Glacier"], ["Rome is the capital of", "Howard Glacier is in"]
    router = RetrievalRouter(RetrievalConfig(), encode(prompts), subjects, prompts, {"subject": 0.99, "free": 2.0},
                             encode=encode)
    query = "Rome fell in 476. Howard Glacier is in"  # leading noise names another edited subject
    routes = router.route([query], encode([query]))
    assert routes.routed.tolist() == [True] and routes.edit.tolist() == [1]


def test_edit_whose_prompt_lacks_its_subject_is_not_indexed():
    assert len(SubjectIndex(["Somebody Else"], ["BBC One, by"])) == 0


def test_focus_drops_leading_sentences():
    text = "A Marañón Week is annually held since 1990. Howard Glacier is in"
    assert focus(text, "Howard Glacier") == "Howard Glacier is in"
    assert focus("Howard Glacier is in", "Howard Glacier") == "Howard Glacier is in"
    assert focus("Nothing here", "Howard Glacier") == "Nothing here"


def test_conformal_threshold_meets_its_rate():
    scores = torch.rand(10_000, generator=torch.Generator().manual_seed(0))
    threshold = conformal_threshold(scores, 0.02)
    assert (scores >= threshold).double().mean() <= 0.02
    fresh = torch.rand(10_000, generator=torch.Generator().manual_seed(1))
    assert abs(float((fresh >= threshold).double().mean()) - 0.02) < 0.005
    assert conformal_threshold(torch.rand(10), 0.02) == math.inf  # too few scores for a 2% promise
    never = torch.full((100,), -math.inf)
    assert conformal_threshold(never, 0.05) == math.inf


def _router(config: RetrievalConfig, subjects=SUBJECTS):
    encode = fake_encoder()
    return RetrievalRouter(config, encode(PROMPTS), subjects, PROMPTS, {"subject": 0.9, "free": 0.9}, encode=encode), encode


def test_subject_path_routes_paraphrases_and_rejects_other_subjects():
    router, encode = _router(RetrievalConfig())
    queries = ["Some noise here. BBC One, by", "BBC Radio, by", "Danielle Darrieux's home town is"]
    routes = router.route(queries, encode(queries))
    assert routes.routed.tolist() == [True, False, False]
    assert routes.edit[0] == 0


def test_subject_score_blends_in_the_subject_masked_cosine():
    router, encode = _router(RetrievalConfig(masked_weight=0.25))
    query = "Danielle Darrieux's home town is"
    scores = router.scores([query], encode([query]))
    full = float(encode([query])[0] @ encode([PROMPTS[1]])[0])
    masked = float(encode(["it's home town is"])[0] @ encode(["The mother tongue of it is"])[0])
    assert scores["subject_edit"].tolist() == [1]
    assert float(scores["subject_sim"][0]) == pytest.approx(0.75 * full + 0.25 * masked, abs=1e-6)
    assert without_subject("Where was BBC One founded?", "bbc one") == "Where was it founded?"


def test_free_path_only_for_edits_without_subjects_by_default():
    router, encode = _router(RetrievalConfig(infer_subjects=False), subjects=[None, SUBJECTS[1], SUBJECTS[2]])
    # Exact repeats of the prompts: cosine 1. Edit 0 has no subject -> free path; edit 2 needs its subject.
    queries = ["BBC One, by", "Toko Yasuda plays the"]
    routes = router.route(queries, encode(queries))
    assert routes.routed.tolist() == [True, True] and routes.edit.tolist() == [0, 2]
    assert router.free_edits.tolist() == [0]


def test_fit_calibrates_on_held_out_pairs_and_unrelated_queries():
    encode = fake_encoder()
    names = [f"Person{i}" for i in range(40)]
    pairs = [PseudoPair(f"{n} is a citizen of", f"{n} is a citizen of which country", n) for n in names]
    unrelated = [f"Query number {i} about weather" for i in range(200)]
    data = RoutingData(PROMPTS, encode(PROMPTS), [None, None, None], unrelated, encode(unrelated), pairs,
                       encode=encode)
    router = RetrievalRouter.fit(data, COSINE)
    assert router.calibration["paraphrase_pairs"] == 40
    achieved = router.route(unrelated, encode(unrelated)).routed.double().mean()
    assert achieved <= 0.02 and router.calibration["achieved_unrelated_rate"] == pytest.approx(float(achieved))


def _refit_setup():
    """(fake encoder, the texts its counting twin encoded, 40 held-out pairs, (prompts, subjects) -> RoutingData
    encoding through the counting twin): what the refit tests measure re-encoding with."""
    encode = fake_encoder()
    seen: list[str] = []

    def counting(texts):
        seen.extend(texts)
        return encode(texts)

    names = [f"Person{i}" for i in range(40)]
    pairs = [PseudoPair(f"{n} is a citizen of", f"{n} is a citizen of which country", n) for n in names]
    unrelated = [f"Query number {i} about weather" for i in range(50)]

    def data(prompts, subjects):
        return RoutingData(prompts, encode(prompts), subjects, unrelated, encode(unrelated), pairs, encode=counting)

    return encode, seen, pairs, data


def test_a_refit_encodes_only_the_masked_prompts_of_new_edits():
    _, seen, _, data = _refit_setup()
    first = RetrievalRouter.fit(data(PROMPTS[:2], SUBJECTS[:2]), COSINE)
    first.state_dict()  # as a pack is saved: the masked prompts' embeddings are encoded and kept
    seen.clear()
    grown = first.refit(data(PROMPTS, SUBJECTS))
    masked = [without_subject(p, s) for p, s in zip(PROMPTS, SUBJECTS)]
    assert masked[2] in seen and not {masked[0], masked[1]} & set(seen)  # kept edits: reused, not re-encoded
    fresh = RetrievalRouter.fit(data(PROMPTS, SUBJECTS), COSINE)
    assert torch.equal(grown._masked_edit_embeddings(), fresh._masked_edit_embeddings())
    assert grown.thresholds == fresh.thresholds


class _StubVerifier:
    """Deterministic pseudo-probabilities per (edit prompt, query); records the prompts it scored."""

    def __init__(self):
        self.scored: list[str] = []

    def score(self, prompts, queries):
        self.scored.extend(prompts)
        return torch.tensor([(hash((p, q)) % 1000) / 1000 for p, q in zip(prompts, queries)])

    def tuned_state(self):
        return {}


def test_a_refit_scores_only_the_held_out_pairs_it_has_not_scored():
    from meg.routing.retrieval import pair_key

    encode, seen, pairs, data = _refit_setup()
    verifier = _StubVerifier()
    first = RetrievalRouter._calibrated(data(PROMPTS[:2], SUBJECTS[:2]), COSINE, verifier, None)
    scored = {k for k, v in first.pair_scores.items() if not math.isnan(v.verdict)}
    assert len(first.pair_scores) == len(pairs) and 0 < len(scored) < len(pairs)  # questions of all, scores of used
    loaded = RetrievalRouter.from_state(COSINE, first.fitted(), first.state_dict(), encode(PROMPTS[:2]),
                                        [EditRequest(p, "x", s) for p, s in zip(PROMPTS[:2], SUBJECTS[:2])])
    assert list(loaded.pair_scores) == list(first.pair_scores)
    for k, v in first.pair_scores.items():  # NaN: a pair the first fit did not weigh
        got = loaded.pair_scores[k]
        torch.testing.assert_close(torch.tensor([got.cosine, got.verdict]), torch.tensor([v.cosine, v.verdict]),
                                   rtol=0, atol=0, equal_nan=True)
        assert torch.equal(got.question, v.question)
    seen.clear()
    verifier.scored.clear()
    grown = first.refit(data(PROMPTS, SUBJECTS))
    questions = {p.question for p in pairs}
    assert not questions & set(seen)  # every question was encoded by the first fit
    rescored = {pair_key(p) for p in pairs if p.question in set(verifier.scored)}
    assert not rescored & scored  # a pair scored once is never scored again
    fresh = RetrievalRouter._calibrated(data(PROMPTS, SUBJECTS), COSINE, verifier, None)
    assert grown.thresholds == fresh.thresholds
    assert all(torch.equal(grown.reference[k], fresh.reference[k]) for k in fresh.reference)


def test_free_threshold_never_below_what_held_out_paraphrases_reach():
    """Three free edits: 200 unrelated queries alone allow a low free threshold (4 of them may pass at any
    cosine); the floor from the held-out pairs (cosine 0.9) keeps a same-topic question at 0.7 out."""
    base = fake_encoder(dim=64)  # random 64-d texts: cosines of unrelated ones stay below ~0.45

    def toward(source: str, text: str, cosine: float) -> torch.Tensor:
        anchor, noise = base([source])[0], base([text])[0]
        noise = unit(noise - (noise @ anchor) * anchor)  # orthogonal to the anchor: the cosine is exact
        return cosine * anchor + (1 - cosine**2) ** 0.5 * noise

    def encode(texts):
        rows = []
        for t in texts:
            if t.endswith(" para"):
                rows.append(toward(t.removesuffix(" para"), t, 0.9))
            elif t.startswith(("near ", "close ")):  # a question on the edit's topic / a paraphrase of the edit
                kind, source = t.split(" ", 1)
                rows.append(toward(source, t, 0.7 if kind == "near" else 0.95))
            else:
                rows.append(base([t])[0])
        return torch.stack(rows)

    pairs = [PseudoPair(f"Question {i} asked", f"Question {i} asked para", None) for i in range(40)]
    unrelated = [f"Query number {i} about weather" for i in range(200)]
    data = RoutingData(PROMPTS, encode(PROMPTS), [None, None, None], unrelated, encode(unrelated), pairs,
                       encode=encode)
    config = replace(COSINE, infer_subjects=False, subject_threshold=0.5)
    floored = RetrievalRouter.fit(data, config)
    bare = RetrievalRouter.fit(data, replace(config, free_floor=False))
    assert bare.thresholds["free"] < 0.6
    assert floored.thresholds["free"] == floored.calibration["free_floor"] == pytest.approx(0.9, abs=1e-5)
    queries = [f"near {PROMPTS[0]}", f"close {PROMPTS[1]}"]
    assert bare.route(queries, encode(queries)).routed.tolist() == [True, True]
    assert floored.route(queries, encode(queries)).routed.tolist() == [False, True]


def test_weighted_quantile():
    values = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    assert weighted_quantile(values, torch.ones(4, dtype=torch.float64), 0.5) == 0.2
    assert weighted_quantile(values, torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64), 0.1) == 0.3
    assert weighted_quantile(values, torch.ones(4, dtype=torch.float64), 0.0) == 0.1


def test_matched_calibration_uses_the_pairs_nearest_to_the_edits():
    """Two styles of held-out pair: loose paraphrases (cosine ~0.5) and close ones (~0.9). Edits that look like
    the close style get a threshold from the close pairs only; uniform calibration mixes both."""
    dim = 16
    gen = torch.Generator().manual_seed(0)
    style = {"loose": unit(torch.randn(dim, generator=gen)), "close": unit(torch.randn(dim, generator=gen))}
    table: dict[str, torch.Tensor] = {}

    def encode(texts):
        rows = []
        for text in texts:
            if text not in table:
                kind, i, role = text.split()[0], int(text.split()[1]), text.split()[-1]
                base = unit(style[kind] * 3 + 0.3 * torch.randn(dim, generator=torch.Generator().manual_seed(i)))
                noise = unit(torch.randn(dim, generator=torch.Generator().manual_seed(10_000 + i)))
                mix = {"loose": 0.5, "close": 0.9}[kind] if role == "para" else 1.0
                table[text] = unit(mix * base + (1 - mix**2) ** 0.5 * noise)
            rows.append(table[text])
        return torch.stack(rows)

    def fit(close_mark: str, prompts: list[str], **settings) -> RetrievalRouter:
        """40 loose and 20 close pairs (the close questions end with `close_mark`), fitted on `prompts`."""
        pairs = [PseudoPair(f"{k} {i} S{i} q" + (close_mark if k == "close" else ""), f"{k} {i} S{i} para", f"S{i}")
                 for i in range(60) for k in (["loose"] if i < 40 else ["close"])]
        data = RoutingData(prompts, encode(prompts), [f"E{i}" for i in range(len(prompts))], [],
                           torch.zeros(0, dim), pairs, encode=encode)
        return RetrievalRouter.fit(data, replace(COSINE, **settings))

    one = fit("", ["close 100 E0 q"])  # a single edit counts its 50 nearest pairs, not the one nearest
    assert one.calibration["pairs_nearest_to_edits"] == 50

    close_edits = [f"close {100 + i} E{i} q" for i in range(5)]
    matched = fit("", close_edits).thresholds["subject"]
    uniform = fit("", close_edits, matched_calibration=False)
    assert uniform.thresholds["subject"] < 0.6 < matched
    assert uniform.calibration["pairs_nearest_to_edits"] == 0

    # Edits asked as questions are matched to question pairs only, however close the other pairs' embeddings:
    # the loose pairs are prompts to complete, the close ones questions, the edits questions in the loose style.
    question_edits = [f"loose {100 + i} E{i} q?" for i in range(5)]
    by_form = fit("?", question_edits).thresholds["subject"]
    by_embedding = fit("?", question_edits, match_form=False)
    assert by_embedding.thresholds["subject"] < 0.6 < by_form


def test_too_few_pairs_to_calibrate_is_one_line():
    encode = fake_encoder()
    data = RoutingData(PROMPTS, encode(PROMPTS), SUBJECTS, [], torch.zeros(0, 16), [], encode=encode)
    with pytest.raises(InputError, match="needs >= 20 held-out pseudo pairs with a subject, got 0"):
        RetrievalRouter.fit(data, COSINE)


def test_paper_gate_routes_below_epsilon():
    encode = fake_encoder()
    edits = [f"Edit prompt number {i}" for i in range(30)]
    unrelated = [f"Unrelated query {i}" for i in range(200)]
    data = RoutingData(edits, encode(edits), [None] * 30, unrelated, encode(unrelated))
    fixed = router_class("paper-gate").fit(data, GateConfig(max_epochs=400, epsilon=0.5), False)
    routes = fixed.route(edits, encode(edits))
    assert routes.routed.all() and (routes.edit == torch.arange(30)).all()  # memorised: entropy ~ 0
    assert fixed.calibration.method == "fixed" and fixed.calibration.epsilon == 0.5
    calibrated = router_class("paper-gate").fit(data, GateConfig(max_epochs=400), False)
    assert calibrated.route(unrelated, encode(unrelated)).routed.double().mean() <= 0.02
    assert set(ROUTERS) == {"paper-gate", "retrieval"}


def test_conflicting_locality_prompts_are_those_asking_an_edited_fact():
    from meg.benchmarks.routing import conflicting_locality, rates
    from meg.requests import EditRequest
    from meg.routing import Routes

    def edit(prompt, subject, truth, loc, loc_answer=None):
        answers = (loc_answer,) if loc_answer is not None else ()
        return EditRequest(prompt, "X", subject, ("p",), (loc,), truth, unrelated_answers=answers)

    requests = [
        edit("In which constellation is Tau Herculis?", "Tau Herculis", "Hercules",
             "The constellation of Tau Herculis is", "Hercules"),  # same subject, same answer: the edited fact
        edit("The taxon rank of Epaspidoceras is", "Epaspidoceras", "genus",
             "Which family does Epaspidoceras belong to?", "Aspidoceratidae"),  # same subject, other fact
        edit("LeBron James is a professional", "LeBron James", "basketball",
             "Michael Jordan plays", "basketball"),  # names edit 3's subject and expects its true answer
        edit("Michael Jordan plays", "Michael Jordan", "basketball", "LeBron James is a professional"),  # repeats edit
    ]
    conflicting = conflicting_locality(requests)
    assert conflicting.tolist() == [True, False, True, True]
    without_locality = EditRequest("Who wrote Catalytic Asymmetry?", "Y", "Catalytic Asymmetry", ground_truth="Ng")
    assert conflicting_locality([*requests, without_locality]).tolist() == [True, False, True, True, False]
    routed = torch.tensor([True, True, False, False])
    routes = {name: Routes(routed, torch.arange(4), torch.zeros(4)) for name in ("edits", "paraphrases", "locality")}
    out = rates(routes, conflicting)
    assert out["locality_routed"] == 50.0 and out["locality_routed_clean"] == 100.0


def test_paraphrases_of_a_fact_edited_twice_count_for_their_fact():
    from meg.benchmarks.routing import fact_groups, rates
    from meg.requests import EditRequest
    from meg.routing import Routes

    requests = [EditRequest("What constellation is home to Butterfly Cluster?", "A", "Butterfly Cluster",
                            ground_truth="Scorpius"),
                EditRequest("What is the constellation where Butterfly Cluster is located?", "B", "Butterfly Cluster",
                            ground_truth="Scorpius"),
                EditRequest("Who discovered Butterfly Cluster?", "C", "Butterfly Cluster", ground_truth="Ptolemy"),
                EditRequest("An edit without subject", "D")]  # fmt: skip
    facts = fact_groups(requests)
    assert facts[0] == facts[1] and len(set(facts.tolist())) == 3
    routed = torch.tensor([True, True, True, False])
    paraphrases = Routes(routed, torch.tensor([1, 1, 0, -1]), torch.zeros(4))  # row 0 went to its duplicate
    routes = {"edits": paraphrases, "paraphrases": paraphrases, "locality": paraphrases}
    out = rates(routes, facts=facts)
    assert out["paraphrase_own"] == 25.0 and out["paraphrase_own_fact"] == 50.0


def test_route_bench_scores_paraphrases_where_given_and_leaves_out_negatives_about_its_edits(tmp_path):
    """KnowEdit's WikiData files have no paraphrases (the paraphrase rates are None and show as "-"), and their
    (edit prompt, locality prompt) pairs are shipped verifier negatives, which a benchmark on them must not use."""
    from meg.benchmarks.routing import query_sets, rates, usable_requests, write_route_bench
    from meg.data.defaults import default_negative_pairs, held_out_negatives
    from meg.requests import EditRequest
    from meg.routing import Routes

    shipped = default_negative_pairs()[0]
    requests = [EditRequest(shipped.question, "X", shipped.subject, unrelated=(shipped.other,)),
                EditRequest("Who wrote Hamlet?", "Y", "Hamlet", ("Hamlet was written by whom?",), ("Who sang?",)),
                EditRequest("No locality here", "Z", "Here")]
    usable = usable_requests(requests)
    assert usable == requests[:2]
    negatives = held_out_negatives(usable)
    assert shipped not in negatives and len(negatives) == len(default_negative_pairs()) - 1
    sets = query_sets(usable)
    assert sets.paraphrases == ["Hamlet was written by whom?"] and sets.paraphrase_rows == [1]
    two = Routes(torch.tensor([True, True]), torch.tensor([0, 1]), torch.zeros(2))
    one = Routes(torch.tensor([True]), torch.tensor([1]), torch.zeros(1))
    assert rates({"edits": two, "paraphrases": one, "locality": two}, paraphrase_rows=[1])["paraphrase_own"] == 100.0
    empty = Routes(torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.long), torch.zeros(0))
    out = rates({"edits": two, "paraphrases": empty, "locality": two}, paraphrase_rows=[])
    assert out["paraphrase_own"] is None and out["edit_own"] == 100.0
    point = {**out, "locality_routed_clean": 50.0}
    bench = {"n": 2, "calibration_queries": 0, "pseudo_pairs": 0, "conflicting_locality": 1,
             "variants": {"retrieval/hard": {"operating_point": point, "curve": [{**point, "threshold": 0.5}],
                                             "fit_seconds": 1.0, "variant": {"label": "x"}}}}
    write_route_bench(tmp_path, "routing-wiki-2", bench, {"command": "c", "data": "wiki"})
    row = next(line for line in (tmp_path / "routing-wiki-2.md").read_text().splitlines() if "retrieval/hard" in line)
    assert "| 100.0 | - | - | 100.0 | 50.0 |" in row


@pytest.mark.parametrize("prompt, subject", [
    ("The mother tongue of Danielle Darrieux is", "Danielle Darrieux"),
    ("What is the twin city of Lyon? It is", "Lyon"),
    ("When did Battle of the Java Sea occur?", "Battle of the Java Sea"),
    ("In what war did Herbert T. Levack fight in?", "Herbert T. Levack"),
    ("Who is Archduchess Mechthildis of Austria's father?", "Archduchess Mechthildis of Austria"),
    ("thorium, which is called after", None),
])
def test_infer_subject_takes_the_longest_capitalised_name(prompt, subject):
    assert infer_subject(prompt) == subject


def test_edits_without_subjects_get_inferred_ones_unless_subjects_are_off():
    inferred, _ = _router(RetrievalConfig(), subjects=[None, None, None])
    assert inferred.subjects == ["BBC One", "Danielle Darrieux", "Toko Yasuda"] and len(inferred.index) == 3
    plain, _ = _router(RetrievalConfig(infer_subjects=False), subjects=[None, None, None])
    assert plain.subjects == [None] * 3 and len(plain.index) == 0 and plain.free_edits.tolist() == [0, 1, 2]
    off, _ = _router(RetrievalConfig(use_subjects=False))
    assert len(off.index) == 0


def test_route_bench_keeps_and_resumes_earlier_rows(tmp_path, monkeypatch):
    """Rows measured before (same definition) are read back, not measured again; the file is rewritten after
    every router, so a run stopped halfway keeps what it finished."""
    from meg.benchmarks import routing
    from meg.requests import EditRequest

    measured: list[str] = []

    def fake_variant(variant, requests, pairs, unrelated, work, progress, calibration=()):
        measured.append(variant.label)
        point = {"edit_own": 100.0, "paraphrase_own": 90.0, "locality_routed": 1.0}
        return {**routing._settings(variant, len(calibration)), "operating_point": point, "curve": [],
                "fit_seconds": 0.0}

    monkeypatch.setattr(routing, "bench_variant", fake_variant)
    requests = [EditRequest(p, "X", s, (f"Say: {p}",), ("Unrelated?",)) for p, s in zip(PROMPTS, SUBJECTS)]
    setup = {"command": "first", "data": "toy"}

    def run(names, command, stop_after=None, fresh=False, calibration=()):
        def checkpoint(bench):
            routing.write_route_bench(tmp_path, "routing-toy-3", bench, {**setup, "command": command})
            if stop_after is not None and len(measured) == stop_after:
                raise KeyboardInterrupt

        previous = routing.previous_variants(tmp_path, "routing-toy-3", "toy", 3)
        return routing.route_bench(requests, names, [], [], None, progress=False, previous=previous,
                                   checkpoint=checkpoint, stamp={"command": command}, fresh=fresh,
                                   calibration=calibration)

    with pytest.raises(KeyboardInterrupt):
        run(["retrieval/hard", "nearest/hard"], "first", stop_after=1)
    bench = run(["retrieval/hard", "nearest/hard"], "second")
    assert measured == [routing.VARIANTS["retrieval/hard"].label, routing.VARIANTS["nearest/hard"].label]
    assert [v["command"] for v in bench["variants"].values()] == ["first", "second"]
    assert routing.previous_variants(tmp_path, "routing-toy-3", "other data", 3) == {}
    stored = routing.read_results(tmp_path, "routing-toy-3")
    stored["variants"]["retired/router"] = stored["variants"]["nearest/hard"]  # a variant no longer defined
    routing.write_results(tmp_path, "routing-toy-3", stored, "")
    assert "retired/router" not in routing.previous_variants(tmp_path, "routing-toy-3", "toy", 3)
    bench = run(["nearest/hard"], "third", fresh=True)  # measured again; the other row stays
    assert [v["command"] for v in bench["variants"].values()] == ["first", "third"] and len(measured) == 3
    assert "- `first`" in (tmp_path / "routing-toy-3.md").read_text()
    # Retrieval routers calibrate on pairs: given more calibration-only pairs, their rows are measured again;
    # the paper's gate calibrates on unrelated queries only, so its row stands.
    run(["paper-gate/untuned"], "fourth")
    bench = run(["paper-gate/untuned", "nearest/hard"], "fifth", calibration=[PseudoPair("Q of Ann?", "Ann's Q", "Ann")])
    assert len(measured) == 5 and bench["variants"]["nearest/hard"]["calibration_only_pairs"] == 1
    assert bench["variants"]["paper-gate/untuned"]["command"] == "fourth"


def test_relation_veto_drops_a_candidate_whose_template_the_negatives_call_another_relation():
    """KnowEdit's WikiData counterfact: "X is followed by" is a same-subject locality prompt of the edit "X
    follows"; the negatives pair those templates, so the query never reaches that edit. A template the negatives do
    not pair with the edit's (a rewording) is still compared, and so is a query that repeats another edit."""
    prompts, subjects = ["1549 Mikko follows", "1549 Mikko is followed by", "Stifter, Adalbert follows"], \
        ["1549 Mikko", "1549 Mikko", "Stifter, Adalbert"]
    negatives = [NegativePair("Kiss Me Once Tour follows", "Kiss Me Once Tour is followed by", "Kiss Me Once Tour")]
    relations = other_relations(negatives)
    assert relations == {frozenset(("{} follows", "{} is followed by"))}
    encode = fake_encoder()
    queries = ["Stifter, Adalbert is followed by", "1549 Mikko is followed by", "Stifter, Adalbert came after"]
    routers = {}
    for veto in (True, False):
        router = RetrievalRouter(RetrievalConfig(verifier=None, relation_veto=veto), encode(prompts), subjects, prompts,
                                 {"subject": -1.0, "free": 2.0}, encode=encode)  # any named candidate passes
        router.other_relations = relations if veto else set()
        routers[veto] = router
    on, off = (routers[v].route(queries, encode(queries)) for v in (True, False))
    assert off.routed.tolist() == [True, True, True]
    assert on.routed.tolist() == [False, True, True] and on.edit[1:].tolist() == [1, 2]
    saved = routers[True].fitted()
    assert saved["other_relations"] == [["{} follows", "{} is followed by"]]
    back = RetrievalRouter.from_state(RetrievalConfig(verifier=None), saved, {}, encode(prompts),
                                      [EditRequest(p, "x", subject=s) for p, s in zip(prompts, subjects)], encode)
    assert back.route(queries, encode(queries)).routed.tolist() == [False, True, True]
    old = {k: v for k, v in saved.items() if k != "other_relations"}  # a pack saved before the veto: no veto
    assert RetrievalRouter.from_state(RetrievalConfig(verifier=None), old, {}, encode(prompts),
                                      [EditRequest(p, "x", subject=s) for p, s in zip(prompts, subjects)],
                                      encode).route(queries, encode(queries)).routed.tolist() == [True, True, True]


def test_fit_takes_the_relation_pairs_from_the_verifier_negatives():
    encode = fake_encoder()
    names = [f"Person{i}" for i in range(40)]
    pairs = [PseudoPair(f"{n} is a citizen of", f"{n} is a citizen of which country", n) for n in names]
    unrelated = [f"Query number {i} about weather" for i in range(200)]
    negatives = [NegativePair("The mother of Ann Lee is", "The father of Ann Lee is", "Ann Lee")]
    data = RoutingData(PROMPTS, encode(PROMPTS), list(SUBJECTS), unrelated, encode(unrelated), pairs, encode=encode,
                       negative_pairs=negatives)
    assert RetrievalRouter.fit(data, COSINE).other_relations == {frozenset(("The mother of {} is",
                                                                            "The father of {} is"))}
    assert RetrievalRouter.fit(data, replace(COSINE, relation_veto=False)).other_relations == set()
