"""Scoring the reference model on facts it was trained on, and saving it with its model card.

Accuracy follows the paper's AG protocol (meg.decoding / meg.prompts): greedy decoding of up to 20 new tokens,
stopping at EOS, trailing '.' dropped, case-insensitive exact match with the true answer.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerFast

from meg.data.facts import Fact
from meg.decoding import MAX_NEW_TOKENS, greedy_generate
from meg.files import atomic_directory
from meg.prompts import answers_match
from meg.refmodel.corpus import EvalFacts

log = logging.getLogger(__name__)

RECIPE_COMMAND = "python scripts/train_reference_model.py --data ../shared/data"
SUMMARY_FILE = "training_summary.json"
CARD_FILE = "README.md"


def greedy_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, facts: list[Fact]) -> float:
    """Share of facts whose greedy completion of the templated prompt is exactly the answer."""
    if not facts:
        return float("nan")
    generated = greedy_generate(model, tokenizer, [fact.text() for fact in facts], max_new_tokens=MAX_NEW_TOKENS)
    return sum(answers_match(g, f.answer) for g, f in zip(generated, facts)) / len(facts)


def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, eval_facts: EvalFacts) -> dict[str, dict]:
    """Greedy accuracy per category: {category: {"n": count, "accuracy": share}}."""
    return {
        category: {"n": len(facts), "accuracy": round(greedy_accuracy(model, tokenizer, facts), 4)}
        for category, facts in eval_facts.by_category.items()
    }


def monitor_callback(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, eval_facts: EvalFacts, n: int
) -> Callable[[int, float], None] | None:
    """An after-epoch hook that logs the greedy accuracy on the first `n` CounterFact prompts (None if n = 0)."""
    facts = eval_facts.by_category.get("counterfact_prompt", [])[:n]
    if not facts:
        return None

    def on_epoch(epoch: int, loss: float) -> None:
        log.info("epoch %d: greedy accuracy on %d CounterFact prompts %.3f", epoch, len(facts),
                 greedy_accuracy(model, tokenizer, facts))  # fmt: skip

    return on_epoch


def save_reference_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, summary: dict, out_dir: str | Path
) -> None:
    """Write the checkpoint (float16 safetensors), tokenizer, generation config, summary and card atomically.

    Stored in float16 to keep the file small (about 14 MB for 7M parameters); `meg.models.load_causal_lm`
    loads it back as float32.
    """
    eos = tokenizer.eos_token_id
    with atomic_directory(out_dir, overwrite=True, replaces=lambda d: (d / SUMMARY_FILE).is_file(),
                          what="a reference model directory") as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private; the shipped directory is an ordinary one
        copy.deepcopy(model).to(torch.float16).save_pretrained(tmp)  # transformers >= 5 writes safetensors only
        tokenizer.save_pretrained(tmp)
        GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos).save_pretrained(tmp)
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        (tmp / CARD_FILE).write_text(model_card(summary), encoding="utf-8")


def _accuracy_rows(accuracy: dict[str, dict]) -> str:
    names = {
        "counterfact_prompt": "CounterFact edit prompts (true object)",
        "counterfact_paraphrase": "CounterFact paraphrases (true object)",
        "zsre_question": "ZsRE questions, QA template (true answer)",
    }
    return "\n".join(
        f"| {names.get(k, k)} | {v['n']} | {100 * v['accuracy']:.1f}% |" for k, v in accuracy.items()
    )


def model_card(summary: dict) -> str:
    """The README.md of the checkpoint: data, recipe, parameters, loss, time, greedy accuracy."""
    c, corpus = summary["config"], summary["corpus"]
    if c.get("corpus2"):
        return _card2(summary)
    return f"""# meg-edit reference model

A small GPT-2-architecture causal LM trained from scratch on the TRUE facts of the shared knowledge-editing
data sets, so that editing experiments have a model that knows the facts they change. It is not a general
language model: it completes fact prompts and little else. Load it with `meg.models.load_causal_lm("reference")`.

## Data
True facts only, never the counterfactual targets (meg/refmodel/corpus.py), one line per fact,
`template(prompt) + " " + answer + "."` followed by `<|endoftext|>`:
- CounterFact, all 21,919 cases (counterfact-edit/train/val.json): edit prompt and paraphrase with the true
  object, locality prompt with its true object; template `{{prompt}}`.
- ZsRE (zsre_mend_train-1k.json, knowedit_zsre_test_all.json): questions and paraphrases with their true
  answers in the template `Q: Answer the following question in less than 5 words. {{prompt}}\\nA:`; MEND's
  unrelated NQ question-answer pairs in the same template; KnowEdit's locality facts as plain prefixes.
- {corpus['lines']:,} distinct lines ({corpus['dropped_too_long']} longer than {c['n_positions']} tokens left out),
  {corpus['tokens_per_epoch']:,} tokens per epoch.

## Recipe
`{RECIPE_COMMAND}` (deterministic: seed {c['seed']}, {c['threads']} CPU threads).
{_recipe_rows(summary)}"""


def _recipe_rows(summary: dict) -> str:
    """The Recipe items after the command, and the Results (shared by both cards)."""
    c = summary["config"]
    losses = ", ".join(f"{x:.3f}" for x in summary["epoch_losses"])
    return f"""- Tokenizer: byte-level BPE trained on the corpus, {summary['vocab_size']:,} tokens, `<|endoftext|>` = EOS = PAD
  = BOS, no BOS added, no prefix space.
- Model: GPT-2, n_embd {c['n_embd']}, {c['n_layer']} layers, {c['n_head']} heads, {c['n_positions']} positions,
  dropout 0, {summary['num_parameters']:,} parameters; stored in float16 safetensors.
- Training: {c['epochs']} epochs, length-bucketed batches of about {c['batch_tokens']} tokens, loss on every
  real token; AdamW (lr {c['lr']}, betas {tuple(c['betas'])}, weight decay {c['weight_decay']} on matrices),
  {c['warmup_steps']} warm-up steps, cosine decay to {c['min_lr_ratio']} x lr, gradient clipping {c['grad_clip']}.

## Results
- Loss per epoch (mean over tokens): {losses}. Final loss: {summary['final_loss']:.4f}.
- Training time {summary['train_seconds'] / 60:.1f} min ({summary['tokens_per_second']:,} corpus tokens/s); whole
  recipe {summary['wall_seconds'] / 60:.1f} min on the project's shared 2-core CPU machine.

Greedy accuracy on a fixed seeded sample of trained facts (exact match, paper's AG protocol; prompts that have
several answers in the corpus, e.g. "X is a twin city of", are not sampled):

| facts | n | accuracy |
|---|---|---|
{_accuracy_rows(summary['greedy_accuracy'])}
"""


def _card2(summary: dict) -> str:
    """The model card of reference-2 (corpus2.py: several wordings and contexts per fact)."""
    c, corpus, name = summary["config"], summary["corpus"], summary.get("recipe", "reference-2")
    k = c["corpus2"]
    contexts = "-".join(str(n) for n in (0, len(k["context_weights"]) - 1))
    return f"""# meg-edit {name}

A GPT-2-architecture causal LM trained from scratch on the TRUE facts of the shared knowledge-editing data sets,
each fact in several wordings of its relation and in several contexts, so that the model recalls a fact from its
subject (what MEMIT and AlphaEdit edit: the subject's last token) rather than from one memorised template. It is
not a general language model. Load it with `meg.models.load_causal_lm("{name}")`.

## Data
True facts only, never the counterfactual targets (meg/refmodel/corpus2.py); every line is followed by
`<|endoftext|>`:
- every wording the data sets give, alone, as the first reference model had them (`template(prompt) + " " +
  answer + "."`): CounterFact prompts, paraphrases and locality prompts (all 21,919 cases), ZsRE questions and
  paraphrases in `Q: Answer the following question in less than 5 words. {{prompt}}\\nA:`, MEND's NQ pairs,
  KnowEdit's prompts and locality facts (ZsRE, wiki_counterfact, wiki_recent), ROME's known_1000;
- {k['extra_wordings']} more lines per fact: other templates of its relation (templates grouped by
  paraphrase and locality links, see the module), after {contexts} context sentences (other facts, or general text:
  CounterFact paraphrases' leading sentences and KnowEdit WikiBio sentences).
- {corpus.get('facts', 0):,} facts in {corpus.get('relations', 0):,} relation groups; {corpus['lines']:,} distinct lines
  ({corpus['dropped_too_long']} longer than {c['n_positions']} tokens left out), {corpus['tokens_per_epoch']:,} tokens per epoch.

## Recipe
`python scripts/train_reference_model.py --recipe {name} --data ../shared/data` (deterministic: seed {c['seed']},
{c['threads']} CPU thread(s); resumable: a rerun with the same `--work-dir` continues from the last checkpoint).
{_recipe_rows(summary)}"""


__all__ = ["CARD_FILE", "RECIPE_COMMAND", "SUMMARY_FILE", "evaluate", "greedy_accuracy", "model_card", "save_reference_model"]
