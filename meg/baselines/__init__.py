"""Weight-editing baselines behind the one editing contract (meg.methods.base): FT, MEMIT, AlphaEdit.

Each writes its edits into the weights of a COPY of the model and returns a `PlainLM` around it, so the caller's
model is never changed. Registered in `meg.methods.METHODS` as "ft", "memit" and "alphaedit".

- ft.py: fine-tune the FFN of one layer on the edits (the MeG paper's FT baseline).
- memit.py: MEMIT (Meng et al. 2023): keys at the subject's last token, target hidden states, least-squares
  update spread over a layer range.
- alphaedit.py: AlphaEdit (Fang et al. 2025): MEMIT's keys and targets, the update projected onto the null space
  of the preserved keys.
- covariance.py: E[k k^T] of a layer's keys over a text corpus, cached on disk (MEMIT's and AlphaEdit's statistics).
- base.py: what they share (config helpers, the edited copy, the returned LM, the target-token loss).
"""
