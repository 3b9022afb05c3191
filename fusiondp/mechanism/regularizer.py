"""Representation-consistency regularizer and its clip C_h (docs/design.md §1).

The regularizer for row i is ``‖clip_{C_h}(h(x_i) − h(x̃_i))‖² / C_h²``, which equals
``min(‖v‖², C_h²) / C_h²``: at most 1 per row, and its gradient is exactly zero when the two
representations coincide (no 0/0 from differentiating a norm at zero).

C_h must not depend on the original sensitive values: it is either given (``--c_h``) or estimated
from public data by :func:`estimate_c_h_public`. :func:`estimate_c_h_from_private` reproduces the
reference's choice and is NOT private; callers must mark runs that use it as outside the guarantee.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusiondp.models import eval_mode


def consistency_penalty(h: Tensor, h_reference: Tensor, *, c_h: float) -> Tensor:
    """``min(‖h − h_ref‖², C_h²) / C_h²`` over the last dimension; each value lies in [0, 1]."""
    squared = (h - h_reference).pow(2).sum(dim=-1)
    return torch.clamp(squared, max=c_h**2) / c_h**2


@torch.no_grad()
def _median_representation_distance(model: nn.Module, x: Tensor, x_other: Tensor) -> float:
    with eval_mode(model):
        _, h = model(x)
        _, h_other = model(x_other)
    return float((h - h_other).norm(dim=-1).median())


def estimate_c_h_public(
    model: nn.Module,
    hybrid: Tensor,
    *,
    sensitive_columns: list[int],
    generator: torch.Generator,
    max_rows: int = 4096,
) -> float:
    """Median ‖h(x̃) − h(x̃')‖ at the current parameters, from hybrid rows only.

    Privacy contract: reads only the HYBRID rows (public columns plus imputed sensitive values).
    x̃' is x̃ with its sensitive feature block taken from another random hybrid row, a public
    stand-in for "the same row with other sensitive values".
    """
    if not sensitive_columns:
        raise ValueError("estimate_c_h_public needs at least one sensitive feature column.")
    n = hybrid.shape[0]
    rows = torch.randperm(n, generator=generator)[: min(n, max_rows)].to(hybrid.device)
    x = hybrid[rows]
    donors = rows[torch.randperm(len(rows), generator=generator).to(hybrid.device)]
    x_other = x.clone()
    cols = torch.as_tensor(sensitive_columns, device=hybrid.device)
    x_other[:, cols] = hybrid[donors][:, cols]
    c_h = _median_representation_distance(model, x, x_other)
    return c_h if c_h > 0 else 1.0


def estimate_c_h_from_private(model: nn.Module, original: Tensor, hybrid: Tensor) -> float:
    """The reference's C_h: median ‖h(x) − h(x̃)‖ over ORIGINAL rows at initialisation.

    NOT PRIVATE: it reads the original sensitive values outside the mechanism. Only for
    reproducing the reference; the run's record must say its guarantee does not hold.
    """
    c_h = _median_representation_distance(model, original, hybrid)
    return c_h if c_h > 0 else 1.0
