"""The paper's router: the familiarity network's output entropy below epsilon (paper stage 2, `meg.gate`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from meg import files
from meg.gate import (
    LABELS,
    Calibration,
    FamiliarityGate,
    GateConfig,
    choose_epsilon,
    trained_gate,
)
from meg.routing.base import Encode, Routes, RoutingData, nearest_edit


class PaperGateRouter:
    """Route when H(gate(query)) < epsilon; epsilon fixed or calibrated on unrelated queries.

    The nearest edit (cosine) is reported for every query so records show which edit a routed query resembles;
    it does not influence the decision, exactly as in the paper.
    """

    name: ClassVar[str] = "paper-gate"
    state_file: ClassVar[str] = files.PACK_GATE
    score_name: ClassVar[str] = "entropy"

    def __init__(self, gate: FamiliarityGate, config: GateConfig, calibration: Calibration, edit_embeddings: torch.Tensor):
        self.gate, self.config, self.calibration = gate, config, calibration
        self.edit_embeddings = edit_embeddings  # (N, C)
        self.log: dict[str, Any] = {}

    @classmethod
    def fit(cls, data: RoutingData, config: GateConfig, progress: bool = True) -> PaperGateRouter:
        """Train the gate on the edit embeddings; fix or calibrate epsilon (`config.epsilon`)."""
        gate, log = trained_gate(config, data.edit_embeddings, data.work, progress=progress)
        unrelated = gate.entropy(data.unrelated_embeddings) if len(data.unrelated_embeddings) else None
        router = cls(gate, config, choose_epsilon(config, unrelated), data.edit_embeddings)
        router.log = log.to_dict()
        return router

    def refit(self, data: RoutingData, progress: bool = True) -> PaperGateRouter:
        """The gate for another edit set (a lifelong add or remove) is retrained: it memorises the edit set."""
        return type(self).fit(data, self.config, progress)

    @classmethod
    def from_state(cls, config: GateConfig, fitted: dict[str, Any], state: dict[str, torch.Tensor],
                   edit_embeddings: torch.Tensor, requests: Sequence[Any] = (), encode: Any = None) -> PaperGateRouter:
        gate = FamiliarityGate(edit_embeddings.shape[1], config)
        gate.load_state_dict(state)
        router = cls(gate.eval(), config, Calibration.from_dict(fitted["calibration"]), edit_embeddings)
        router.log = fitted.get("training", {})
        return router

    def route(self, queries: Sequence[str], embeddings: torch.Tensor) -> Routes:
        entropy = self.gate.entropy(embeddings)  # (B,)
        _, edit = nearest_edit(embeddings, self.edit_embeddings)
        return Routes(entropy < self.calibration.epsilon, edit, entropy)

    def route_texts(self, queries: Sequence[str], encode: Encode,
                    whole: bool = False) -> tuple[Routes, dict[str, torch.Tensor]]:  # noqa: ARG002 (always whole)
        """The gate reads every query's embedding: encode them all, route."""
        embeddings = encode(list(queries))
        return self.route(queries, embeddings), dict(zip(queries, embeddings))

    def curve(self, queries: Sequence[str], embeddings: torch.Tensor) -> list[tuple[float, Routes]]:
        """Routes at epsilon from 0 to ln(10) (log-spaced), for threshold curves."""
        entropy = self.gate.entropy(embeddings)
        _, edit = nearest_edit(embeddings, self.edit_embeddings)
        grid = [0.0] + torch.logspace(-8, math.log10(math.log(LABELS)), 40).tolist()
        return [(eps, Routes(entropy < eps, edit, entropy)) for eps in grid]

    def fitted(self) -> dict[str, Any]:
        return {"calibration": self.calibration.to_dict(), "training": self.log}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.gate.state_dict()
