"""The reference model: a small GPT-2-architecture LM trained here on the true facts of the shared data sets.

No pretrained causal LM can be downloaded on the project's machines, and random tiny models know no facts to
edit, so the project trains and ships its own (meg/assets/reference-model, loaded as `load_causal_lm("reference")`).
Recipe: `python scripts/train_reference_model.py` (see the model card for the numbers of the shipped run).
"""
