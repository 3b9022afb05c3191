"""The update rule of the step: plain SGD (the reference), heavy-ball momentum or Adam, and the
learning-rate schedule. Used by every mode (``--optimizer``, ``--momentum``, ``--lr_schedule``).

Privacy contract: an :class:`Optimizer` sees only the step's combined update
``g = w_pub · g_pub + w_priv · g_priv``, built AFTER the private term was clipped per example, summed
and noised (:func:`fusiondp.mechanism.step.private_gradient`). Its state (momentum buffer, Adam's
moments) is a function of past released updates only: post-processing of the Gaussian mechanism's
outputs, so DP-momentum and DP-Adam cost no privacy beyond the noise already accounted for. It never
sees per-example or un-noised private quantities, and it does not change what the step draws: the
noise is added on every step whatever the optimizer. The schedule depends only on the step index
and T (public).

Why our own few lines rather than ``torch.optim``: the default must reproduce the reference's update
``θ ← θ − lr · g`` bit for bit (``torch.optim.SGD`` computes ``θ.add_(g, alpha=-lr)``, fused
differently, and dispatches to foreach/fused kernels), the projection onto ‖θ‖ ≤ M and a per-step lr
fit a plain call better than a param-group state, and a reviewer of the mechanism reads these lines
instead of torch.optim's dispatch. Momentum and Adam follow ``torch.optim.SGD(momentum=μ)`` (no
dampening, no Nesterov) and ``torch.optim.Adam`` (bias-corrected, no weight decay), which the tests
check to round-off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

OPTIMIZERS = ("sgd", "momentum", "adam")
LR_SCHEDULES = ("constant", "cosine")
DEFAULT_MOMENTUM = 0.9
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
"""Adam's β1, β2 and ε: fixed at the common values (torch.optim.Adam's defaults), not tuned."""


def scheduled_lr(lr: float, schedule: str, *, step: int, steps: int) -> float:
    """The learning rate of step ``step`` (0-based) of ``steps``.

    ``constant``: ``lr`` itself (the very same float: the reference's numbers do not move).
    ``cosine``: ``lr · (1 + cos(π · step / steps)) / 2``, from ``lr`` at step 0 down towards 0 (the
    last step's is ``lr · (1 − cos(π / steps)) / 2 ≈ lr · π² / (4 · steps²)``), as
    ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=steps, eta_min=0)``.
    """
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        if not 0 <= step < steps:
            raise ValueError(f"step {step} outside the schedule's {steps} steps.")
        return lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
    raise ValueError(f"--lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}.")


def warmup_steps(warmup: float, *, steps: int) -> int:
    """How many of ``steps`` steps the ``--alpha_warmup`` ramp lasts: ⌈F · T⌉ (0 when F = 0)."""
    if not (math.isfinite(warmup) and 0 <= warmup <= 1):
        raise ValueError(f"--alpha_warmup must lie in [0, 1], got {warmup!r}.")
    return math.ceil(warmup * steps)


def warmed_up_weight(weight: float, *, warmup: float, step: int, steps: int) -> float:
    """The private term's weight at step ``step`` (0-based) of ``steps`` under ``--alpha_warmup``.

    ``warmup`` = 0: ``weight`` itself (the very same float: the reference's numbers do not move).
    ``warmup`` = F in (0, 1]: over the first R = ⌈F · T⌉ steps the weight rises linearly,
    ``weight · (t + 1) / R`` at step t, reaching ``weight`` at step R − 1 and holding it after: the
    public term nearly alone at first, then the private term handed its full weight, so that the
    objective moves from the hybrid rows' loss towards the original rows'. The weight depends only on
    the step index and T (public), and it multiplies the private term after its noise was added:
    post-processing, no privacy cost.
    """
    ramp = warmup_steps(warmup, steps=steps)
    if not 0 <= step < steps:
        raise ValueError(f"step {step} outside the run's {steps} steps.")
    if ramp == 0:
        return weight
    return weight * min(1.0, (step + 1) / ramp)


@dataclass
class Optimizer:
    """The update rule and its state, kept across the steps of one run (the loop creates one).

    ``update(params, grads, lr)`` moves each parameter in place: ``sgd`` θ ← θ − lr·g; ``momentum``
    b ← μ·b + g, θ ← θ − lr·b; ``adam`` the bias-corrected Adam step with :data:`ADAM_BETAS` and
    :data:`ADAM_EPS`. ``grads`` is the step's combined, already-noised update (see the module
    docstring): nothing private reaches the state except through it.
    """

    kind: str = "sgd"
    momentum: float = DEFAULT_MOMENTUM
    betas: tuple[float, float] = ADAM_BETAS
    eps: float = ADAM_EPS
    steps_taken: int = 0
    state: dict[str, dict[str, Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {self.kind!r}.")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise ValueError(f"--momentum must lie in [0, 1), got {self.momentum!r}.")

    @property
    def stateful(self) -> bool:
        return self.kind != "sgd"

    @torch.no_grad()
    def update(self, params: dict[str, Tensor], grads: dict[str, Tensor], *, lr: float) -> None:
        self.steps_taken += 1
        for name, p in params.items():
            g = grads[name]
            if self.kind == "sgd":
                p.sub_(lr * g)  # exactly the reference's update
            elif self.kind == "momentum":
                buf = self.state.setdefault(name, {}).get("momentum_buffer")
                if buf is None:
                    buf = self.state[name]["momentum_buffer"] = g.detach().clone()
                else:
                    buf.mul_(self.momentum).add_(g)
                p.sub_(lr * buf)
            else:
                self._adam(name, p, g, lr=lr)

    def _adam(self, name: str, p: Tensor, g: Tensor, *, lr: float) -> None:
        beta1, beta2 = self.betas
        st = self.state.setdefault(name, {})
        if not st:
            st["exp_avg"] = torch.zeros_like(p)
            st["exp_avg_sq"] = torch.zeros_like(p)
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g.conj(), value=1 - beta2)
        t = self.steps_taken
        bias1, bias2 = 1 - beta1**t, 1 - beta2**t
        denom = (v.sqrt() / math.sqrt(bias2)).add_(self.eps)
        p.addcdiv_(m, denom, value=-lr / bias1)
