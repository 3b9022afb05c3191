"""Negative controls: explicit, named broken variants the audit must flag (docs/design.md §4).

They are passed to the audit by name, never patched in: :class:`StepVariant` is the private step the
step-canary audit (:func:`fusiondp.audit.step_canaries.step_canary_audit`) runs, :class:`PipelineControl`
a leak outside the mechanism that :func:`fusiondp.audit.canaries.audit_once` builds into the data
preparation or the run configuration. No training script can select them: they exist to show that the
audit has the power to see what they break.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fusiondp.mechanism import step


@dataclass(frozen=True)
class StepVariant:
    """A private step for the step-canary audit: the package's own (:data:`CORRECT`) or a broken one."""

    name: str
    description: str
    clip: bool = True
    noise: bool = True

    def private_gradient(
        self,
        model: nn.Module,
        x_private: Tensor,
        x_reference: Tensor | None,
        y: Tensor,
        *,
        cfg: step.StepConfig,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        generator: torch.Generator,
    ) -> step.Grads:
        """The released private gradient of one Poisson batch under this variant.

        The correct variant is :func:`fusiondp.mechanism.step.private_gradient` itself; ``no_noise`` is the same
        step with σ = 0; ``no_clipping`` sums the raw per-example gradients (vmap) and adds the
        calibrated noise, dividing by the expected batch size.
        """
        if self.clip:
            if not self.noise:
                cfg = dataclasses.replace(cfg, noise_multiplier=0.0)
            return step.private_gradient(
                model, x_private, x_reference, y, cfg=cfg, loss_fn=loss_fn, generator=generator
            )[0]
        # The one draw the package's step spends on its own random stream, so that the noise that
        # follows is the same as the correct step's.
        torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)
        if x_private.shape[0] == 0:
            summed = {k: torch.zeros_like(p) for k, p in step.trainable_params(model).items()}
        else:
            per_example = step.per_example_gradients(
                model, x_private, x_reference, y, loss_fn=loss_fn, reg_weight=cfg.reg_weight, c_h=cfg.c_h
            )
            summed = {name: g.sum(dim=0) for name, g in per_example.items()}
        std = cfg.noise_multiplier * cfg.max_grad_norm if self.noise else 0.0
        noised = step.add_noise(summed, std=std, generator=generator)
        return {k: g / cfg.expected_batch_size for k, g in noised.items()}


CORRECT = StepVariant("correct", "the package's private step (fusiondp.mechanism.step.private_gradient)")
NO_NOISE = StepVariant(
    "no_noise", "clipped, but no noise is added (the record still claims the ε)", noise=False
)
NO_CLIPPING = StepVariant("no_clipping", "noised, but the per-example gradients are not clipped", clip=False)
STEP_VARIANTS: dict[str, StepVariant] = {v.name: v for v in (CORRECT, NO_NOISE, NO_CLIPPING)}


@dataclass(frozen=True)
class PipelineControl:
    """A leak outside the mechanism: something released without noise that reads original values."""

    name: str
    description: str
    c_h_from_private: bool = False
    """C_h estimated from the original rows (the reference's ``--c_h_from_private``)."""
    scaler_from_private: bool = False
    """The preprocessor's scales and vocabularies fitted on the original rows too."""


C_H_FROM_PRIVATE = PipelineControl(
    "c_h_from_private", "C_h estimated from the original rows", c_h_from_private=True
)
SCALER_FROM_PRIVATE = PipelineControl(
    "scaler_from_private", "scalers and vocabularies fitted on the original rows", scaler_from_private=True
)
PIPELINE_CONTROLS: dict[str, PipelineControl] = {c.name: c for c in (C_H_FROM_PRIVATE, SCALER_FROM_PRIVATE)}
