"""The paper's router: the familiarity network's output entropy below epsilon (paper stage 2, `meg.gate`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from meg import files
from meg.gate import Calibration, FamiliarityGate, GateConfig, choose_epsilon
from meg.routing.base import Routes, RoutingData, nearest_edit
from meg.stages import trained_gate

if TYPE_CHECKING:
    from meg.config import MegConfig


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
    def fit(cls, data: RoutingData, meg_config: MegConfig, progress: bool = True) -> PaperGateRouter:
        """Train the gate on the edit embeddings; fix or calibrate epsilon (`meg_config.gate`)."""
        config = meg_config.gate
        gate, log = trained_gate(config, data.edit_embeddings, data.extra.get("work"), progress=progress)
        unrelated = gate.entropy(data.unrelated_embeddings) if len(data.unrelated_embeddings) else None
        router = cls(gate, config, choose_epsilon(config, unrelated), data.edit_embeddings)
        router.log = log.to_dict()
        return router

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, torch.Tensor], edit_embeddings: torch.Tensor,
                   requests: Sequence[Any] = (), encode: Any = None) -> PaperGateRouter:
        gate_config = GateConfig.from_dict(config["gate"])
        gate = FamiliarityGate(edit_embeddings.shape[1], gate_config)
        gate.load_state_dict(state)
        return cls(gate.eval(), gate_config, Calibration.from_dict(config["calibration"]), edit_embeddings)

    def route(self, queries: Sequence[str], embeddings: torch.Tensor) -> Routes:
        entropy = self.gate.entropy(embeddings)  # (B,)
        _, edit = nearest_edit(embeddings, self.edit_embeddings)
        return Routes(entropy < self.calibration.epsilon, edit, entropy)

    def curve(self, queries: Sequence[str], embeddings: torch.Tensor) -> list[tuple[float, Routes]]:
        """Routes at epsilon from 0 to ln(10) (log-spaced), for threshold curves."""
        entropy = self.gate.entropy(embeddings)
        _, edit = nearest_edit(embeddings, self.edit_embeddings)
        grid = [0.0] + torch.logspace(-8, math.log10(math.log(self.config.labels)), 40).tolist()
        return [(eps, Routes(entropy < eps, edit, entropy)) for eps in grid]

    def config_dict(self) -> dict[str, Any]:
        return {"gate": self.config.to_dict(), "calibration": self.calibration.to_dict(), "training": self.log}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.gate.state_dict()
