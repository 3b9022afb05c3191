"""Where the private term acts: every parameter (the default), or only the first layer's weights on the
sensitive input columns (``--private_scope sensitive_inputs``).

Why: the Gaussian noise of DP-SGD has norm about σ·C·√d in the d coordinates it is added to. In the split
modes the noise-free public term already trains the whole model on the hybrid rows; what the private
term must add is how to use the TRUE sensitive values, which enter the model through the first layer's
weights on their columns (on sepsis 6 × 64 = 384 of 19,777 coordinates). Restricting the private term to
those coordinates drops the rest of its gradient (a bias) for about √(19,777/384) ≈ 7 times less noise.

Privacy: the mask depends only on which input columns are sensitive (public). Each per-example gradient
is masked, then clipped to C, summed and noised on the masked coordinates; outside them the sum is
exactly zero and nothing is released, so the sensitivity and σ are those of the unrestricted mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

PRIVATE_SCOPES = ("all", "sensitive_inputs")


def input_layer(model: nn.Module, num_features: int) -> str:
    """The name of the first ``nn.Linear`` (in module order), which must read the ``num_features`` inputs."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            if module.in_features != num_features:
                break
            return name
    raise ValueError(
        f"--private_scope sensitive_inputs needs a model whose first linear layer reads the {num_features} "
        f"input features; {type(model).__name__} has none (use --private_scope all)."
    )


def sensitive_input_mask(
    model: nn.Module, *, num_features: int, sensitive_features: Sequence[int]
) -> dict[str, Tensor]:
    """0/1 masks, one per trainable parameter: ones on the input layer's weight columns of
    ``sensitive_features`` (indices into the input), zeros everywhere else."""
    if not sensitive_features:
        raise ValueError("--private_scope sensitive_inputs: the data have no sensitive input columns.")
    bad = [i for i in sensitive_features if not 0 <= i < num_features]
    if bad:
        raise ValueError(f"sensitive feature indices {bad} are outside the {num_features} input columns.")
    layer_name = input_layer(model, num_features)
    masks = {name: torch.zeros_like(p) for name, p in model.named_parameters() if p.requires_grad}
    weight = f"{layer_name}.weight" if layer_name else "weight"
    if weight not in masks:
        raise ValueError(f"the input layer's weight {weight!r} is not trainable.")
    masks[weight][:, list(sensitive_features)] = 1.0
    return masks


def mask_size(mask: dict[str, Tensor]) -> int:
    """How many coordinates the private term lives on."""
    return int(sum(m.sum().item() for m in mask.values()))
