"""Evaluation with the paper's protocol: metrics, the resumable harness, reports, and the `meg run` runner."""
