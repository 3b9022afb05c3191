"""Per-example clipping without per-example gradients of the whole model ("book-keeping").

The private term of a step needs Σ_i clip_C(∇θ L_i). The reference implementation
(:func:`fusiondp.step.per_example_gradients`) materialises every ∇θ L_i with torch.func vmap. This
module gets the same sum from ONE forward and ONE backward to the layers' outputs (Bu et al. 2023,
book-keeping; Li et al. 2022, ghost norms):

1. Forward the stacked views ``(views, batch, ...)`` once, recording each layer's input ``a`` and
   output. Dropout masks are drawn for the whole ``(batch, ...)`` block, exactly the numbers vmap's
   per-example draws give, so the views of a row share them as before.
2. Backpropagate Σ_i L_i to the layers' OUTPUTS only (no parameter gradient is formed): ``g``.
   Row i's loss depends only on its own two rows (every supported layer acts per row), so the
   output gradients of rows (·, i) are those of L_i alone.
3. Per layer and example, ‖∇L_i‖² from ``a`` and ``g``. Example i's gradient of a Linear layer is
   Σ_s g_is a_isᵀ over its positions s (both views, every token): the views' cross-term is part
   of it. Where that is cheaper (few positions per example, wide layers), the squared norm is the
   ghost norm Σ_{s,t} (g_is·g_it)(a_is·a_it), never forming the gradient; otherwise the layer's
   per-example gradient is formed (it is small: a LayerNorm, CAML's convolution, a narrow head).
4. With c_i = min(1, C / (‖∇L_i‖ + 1e-6)), the clipped sum of a ghost layer is one matmul,
   Σ_i c_i Σ_s g_is a_isᵀ; of a materialised layer, Σ_i c_i ∇L_i.

Opacus's grad and norm samplers (``opacus.grad_sample``) do the per-layer algebra: given
activations with the example on the first axis and the view (and token) axes after it, they sum over
those axes, which is exactly the per-example gradient across views. Opacus's own wrappers
(GradSampleModule, ghost clipping) cannot serve whole: they clip per ROW of the batch, while a
FusionDP example spans two rows (original and hybrid views) whose gradients must be added BEFORE
the norm is taken, and ghost clipping's second backward is the cost this module avoids.

Privacy contract: as :func:`fusiondp.step.per_example_gradients`. The original rows enter only
here; nothing computed from them leaves except the clipped sum (and the norms, which the step keeps
to itself). Equality with the per-example loop is tested in float64 (tests/test_clipping.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from opacus.grad_sample.conv import compute_conv_grad_sample
from torch import Tensor, nn

from fusiondp.models import LabelwiseLinear

Grads = dict[str, Tensor]

METHODS = ("auto", "bookkeeping", "vmap")
"""``--per_example``: book-keeping where the model allows it (auto), always, or the vmap reference."""


@dataclass
class _Layer:
    """What the per-example algebra needs of one call of one layer."""

    module: nn.Module
    activation: Tensor
    output: Tensor


def _example_sum(t: Tensor, keep: int) -> Tensor:
    """Sum ``(views, batch, *positions, *kept)`` over views and positions: ``(batch, *kept)``."""
    t = t.sum(dim=0)
    return t.sum(dim=tuple(range(1, t.dim() - keep))) if t.dim() > keep + 1 else t


def _check_layout(t: Tensor, views: int, batch: int, name: str) -> None:
    if t.shape[:2] != (views, batch):
        raise RuntimeError(
            f"layer {name!r} got a tensor of shape {tuple(t.shape)}; book-keeping needs leading "
            f"(views, batch) = ({views}, {batch}) dimensions. Run with --per_example vmap."
        )


def _linear_ghost_norm_sq(a: Tensor, g: Tensor) -> Tensor:
    """‖Σ_v g_v a_vᵀ‖² + ‖Σ_v g_v‖² per example, for ``(views, batch, d)`` activations and output grads.

    The weight's squared norm is Σ_{v,w} (g_v·g_w)(a_v·a_w): the cross-view terms included.
    """
    weight = bias = 0
    for v in range(a.shape[0]):  # views: one or two; row-wise dot products beat a batched tiny matmul
        for w in range(v, a.shape[0]):
            twice = 1 if v == w else 2
            gg = (g[v] * g[w]).sum(dim=-1)
            weight = weight + twice * gg * (a[v] * a[w]).sum(dim=-1)
            bias = bias + twice * gg
    return weight.clamp(min=0) + bias.clamp(min=0)


def _linear_grads(layer: nn.Linear, a: Tensor, g: Tensor) -> Grads:
    """Per-example gradients of an nn.Linear from ``(views, batch, *positions, d)`` tensors."""
    grads = {layer.weight: torch.einsum("vb...o,vb...i->boi", g, a)}
    if layer.bias is not None:
        grads[layer.bias] = _example_sum(g, keep=1)
    return grads


def _layer_norm_grads(layer: nn.LayerNorm, a: Tensor, g: Tensor) -> Grads:
    normalised = nn.functional.layer_norm(a, layer.normalized_shape, eps=layer.eps)
    keep = len(layer.normalized_shape)
    return {layer.weight: _example_sum(normalised * g, keep), layer.bias: _example_sum(g, keep)}


def _labelwise_grads(layer: LabelwiseLinear, a: Tensor, g: Tensor) -> Grads:
    """``a``: ``(views, batch, *positions, labels, features)``; ``g``: ``(..., labels)``."""
    grads = {layer.weight: _example_sum(a * g[..., None], keep=2)}
    if layer.bias is not None:
        grads[layer.bias] = _example_sum(g, keep=1)
    return grads


def _conv_grads(layer: nn.Conv1d, a: Tensor, g: Tensor, views: int, batch: int) -> Grads:
    """Per-example gradients of a Conv1d, which sees ``(views · batch, channels, length)``, view-major.

    Stride 1, no dilation, one group (CAML's convolution): the weight gradient at kernel offset j is
    Σ_t g[:, :, t] · a[:, :, t + j], one batched matmul per offset over both views of each example.
    Opacus's conv grad sampler (used for any other convolution) unfolds the input first, which on
    the MIMIC shape (128 rows × 1,000 × 512) measured 2.4× slower than this and takes ~260 MB.
    """
    if layer.stride != (1,) or layer.dilation != (1,) or layer.groups != 1 or isinstance(layer.padding, str):
        grads = compute_conv_grad_sample(layer, [a], g)
        return {p: gs.view(views, batch, *gs.shape[1:]).sum(dim=0) for p, gs in grads.items()}
    if layer.padding[0]:
        a = nn.functional.pad(a, (layer.padding[0], layer.padding[0]))
    length = g.shape[-1]
    # Positions-major input, so that each offset's window is a plain (length, channels) block per row.
    a_t = a.transpose(1, 2).contiguous()
    weight = g.new_empty(batch, *layer.weight.shape)
    for offset in range(layer.kernel_size[0]):
        rows = torch.bmm(g, a_t[:, offset : offset + length])  # (views · batch, out, in)
        weight[..., offset] = rows.view(views, batch, *rows.shape[1:]).sum(dim=0)
    grads = {layer.weight: weight}
    if layer.bias is not None:
        grads[layer.bias] = g.sum(dim=-1).view(views, batch, -1).sum(dim=0)
    return grads


def unsupported_reason(model: nn.Module) -> str | None:
    """Why book-keeping cannot run this model (then the vmap reference does), or None.

    Every trainable parameter must belong directly to a module of a type with a rule here (exactly
    that type: a subclass may compute something else), and that module must be called once per
    forward (checked at each step). A parameter read outside its module's forward is not seen by the
    hooks: a new model must pass the oracle test (tests/test_clipping.py) before it relies on this.
    """
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        kind = type(module)
        if kind not in (nn.Linear, nn.LayerNorm, nn.Conv1d, LabelwiseLinear):
            return f"module {name!r} ({kind.__name__}) has trainable parameters and no book-keeping rule"
        if kind is nn.LayerNorm and (module.weight is None or module.bias is None):
            return f"LayerNorm {name!r} without both weight and bias"
        if kind is LabelwiseLinear and module.weight.dim() != 2:
            return f"LabelwiseLinear {name!r} with a {module.weight.dim()}-d weight"
    return None


@contextmanager
def _recording(model: nn.Module) -> Iterator[list[_Layer]]:
    tape: list[_Layer] = []

    def record(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        tape.append(_Layer(module, inputs[0], output))

    handles = [
        m.register_forward_hook(record)
        for m in model.modules()
        if any(p.requires_grad for p in m.parameters(recurse=False))
    ]
    try:
        yield tape
    finally:
        for handle in handles:
            handle.remove()


def clipped_sum(
    model: nn.Module,
    inputs: Tensor,
    private_terms: Callable[[Tensor, Tensor], Tensor],
    *,
    max_grad_norm: float,
) -> tuple[Grads, Tensor]:
    """Σ_i clip_C(∇θ L_i) and the norms ‖∇θ L_i‖, from one forward and one backward.

    ``inputs`` is ``(views, batch, ...)``; ``private_terms(logits, h)`` maps the model's outputs on
    it to the ``(batch,)`` per-example terms L_i. Every trainable parameter must pass
    :func:`unsupported_reason`. Returns the same as :func:`fusiondp.step.clip_and_accumulate` on
    the vmap gradients, up to floating-point summation order.
    """
    views, batch = inputs.shape[:2]
    names = {p: name for name, p in model.named_parameters() if p.requires_grad}
    with _recording(model) as tape:
        logits, h = model(inputs)
    terms = private_terms(logits, h)
    calls: dict[nn.Module, int] = {}
    for layer in tape:
        calls[layer.module] = calls.get(layer.module, 0) + 1
    owners = {m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))}
    if set(calls) != owners or any(n != 1 for n in calls.values()):
        raise RuntimeError(
            "book-keeping needs every layer with trainable parameters called exactly once per forward; "
            f"calls: { {type(m).__name__: n for m, n in calls.items()} } of {len(owners)} layers. "
            "Run with --per_example vmap."
        )
    out_grads = torch.autograd.grad(terms.sum(), [layer.output for layer in tape], materialize_grads=True)

    per_example: Grads = {}  # name -> (batch, *shape), for layers whose gradient is formed
    ghost: list[tuple[nn.Linear, Tensor, Tensor]] = []  # ghost-norm layers: (layer, a, g)
    norm_sq = out_grads[0].new_zeros(batch)
    for layer, g in zip(tape, out_grads, strict=True):
        module, a, kind = layer.module, layer.activation.detach(), type(layer.module)
        if kind is nn.Conv1d:
            grads = _conv_grads(module, a, g, views, batch)
        else:
            _check_layout(a, views, batch, names[next(iter(module.parameters()))])
            if kind is nn.LayerNorm:
                grads = _layer_norm_grads(module, a, g)
            elif kind is LabelwiseLinear:
                grads = _labelwise_grads(module, a, g)
            elif a.dim() == 3 and views * (a.shape[-1] + g.shape[-1]) <= a.shape[-1] * g.shape[-1]:
                # One position per view (a table row): the ghost norm costs views²·(d_in + d_out) per
                # example against views·d_in·d_out for the gradient, and the clipped sum is one matmul.
                ghost.append((module, a, g))
                norm_sq = norm_sq + _linear_ghost_norm_sq(a, g)
                continue
            else:
                grads = _linear_grads(module, a, g)
        for p, gs in grads.items():
            per_example[names[p]] = gs
            norm_sq = norm_sq + gs.flatten(start_dim=1).pow(2).sum(dim=1)

    norms = norm_sq.sqrt()
    factors = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    summed = {name: torch.einsum("b,b...->...", factors, gs) for name, gs in per_example.items()}
    for module, a, g in ghost:
        weighted = (g * factors[:, None]).reshape(-1, g.shape[-1])  # rows (view, example), scaled by c_i
        summed[names[module.weight]] = weighted.T @ a.reshape(-1, a.shape[-1])
        if module.bias is not None:
            summed[names[module.bias]] = weighted.sum(dim=0)
    # The model's parameter order: the noise is drawn parameter by parameter in this order.
    return {name: summed[name] for name in names.values()}, norms
