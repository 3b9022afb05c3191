"""Gradient-space ("Dirac") canaries: the private step itself, audited with a run's (σ, q, T, C).

Privacy contract: reads no data. The canaries are synthetic coordinates of a linear model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from fusiondp.audit.bound import epsilon_lower_bound
from fusiondp.audit.controls import CORRECT, StepVariant
from fusiondp.mechanism.step import StepConfig


class _DiracModel(nn.Module):
    """θ ∈ R^m, logit ⟨θ, x⟩: with a loss of −logit, row x's gradient is −x exactly, so canary i
    (x = B·e_i, reference view 0) has a private-term gradient of norm B along its own coordinate."""

    def __init__(self, m: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(m, dtype=torch.float64))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return (x * self.theta).sum(dim=-1, keepdim=True), x


def _negative_logit(logits: Tensor, targets: Tensor) -> Tensor:
    return -logits.squeeze(-1)


def step_canary_audit(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    max_grad_norm: float,
    claimed_epsilon: float,
    delta: float,
    canaries: int = 5000,
    guesses: int = 1000,
    canary_norm: float = 100.0,
    confidence: float = 0.95,
    seed: int = 0,
    variant: StepVariant = CORRECT,
) -> dict:
    """White-box one-run audit of the private step with gradient-space ("Dirac") canaries.

    The input-space audit (:mod:`fusiondp.audit.canaries`) has little power at these sizes (a canary's sensitive values barely
    move an MLP). This one gives each canary its own coordinate: "in" canaries have a private-term
    gradient of norm ``canary_norm · C`` along it, "out" canaries are zero-out neighbours (both
    views equal, term exactly 0). For ``steps`` steps every canary enters the Poisson batch with
    probability ``sample_rate`` and the package's own :func:`fusiondp.mechanism.step.private_gradient` (per-example
    gradients, clipping, noise) is applied; the auditor sees the summed released gradients and guesses
    the ``guesses`` canaries with the largest accumulated signal "in". This is the strongest canary
    the zero-out relation allows (a clipped gradient of norm C, in a direction nothing else uses), so a
    correct step must give ε_lower ≤ the claimed ε; a step that skips clipping or noise does not.
    ``variant``: the step audited, the package's own by default, or a named broken one
    (:mod:`fusiondp.audit.controls`) that the audit must flag.
    """
    if not 1 <= guesses <= canaries:
        raise ValueError(f"guesses must lie in [1, {canaries}], got {guesses}.")
    rng = np.random.default_rng(seed)
    is_in = rng.random(canaries) < 0.5  # independent fair coins, as the bound assumes
    x = torch.zeros(canaries, canaries, dtype=torch.float64)
    rows = torch.from_numpy(np.flatnonzero(is_in))
    x[rows, rows] = canary_norm * max_grad_norm
    reference = torch.zeros_like(x)
    y = torch.zeros(canaries, dtype=torch.float64)
    model = _DiracModel(canaries)
    cfg = StepConfig(
        lr=0.0,
        w_pub=0.0,
        w_priv=1.0,
        max_grad_norm=max_grad_norm,
        noise_multiplier=noise_multiplier,
        expected_batch_size=1.0,  # the released sum itself; the scale does not change the guesses
        private_loss="difference",
    )
    sampler = torch.Generator().manual_seed(seed)
    noise = torch.Generator().manual_seed(seed + 1)
    released = torch.zeros(canaries, dtype=torch.float64)
    for _ in range(steps):
        batch = (torch.rand(canaries, generator=sampler) < sample_rate).nonzero().squeeze(1)
        grads = variant.private_gradient(
            model, x[batch], reference[batch], y[batch], cfg=cfg, loss_fn=_negative_logit, generator=noise
        )
        released += grads["theta"]
    scores = (-released).numpy()  # an in-canary's gradient is −B·e_i
    guessed = np.argsort(-scores, kind="stable")[:guesses]
    correct = int(is_in[guessed].sum())
    return {
        "canaries": canaries,
        "guesses": guesses,
        "correct": correct,
        "canary_norm": canary_norm,
        "confidence": confidence,
        "claimed_epsilon": claimed_epsilon,
        "epsilon_lower": epsilon_lower_bound(
            m=canaries, r=guesses, v=correct, delta=delta, confidence=confidence
        ),
    }
