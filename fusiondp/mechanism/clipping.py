"""Per-example clipping without per-example gradients of the whole model ("book-keeping").

The private term of a step needs Σ_i clip_C(∇θ L_i). The reference implementation
(:func:`fusiondp.mechanism.step.per_example_gradients`) materialises every ∇θ L_i with torch.func vmap. This
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
4. With c_i = min(1, C / (‖∇L_i‖ + 1e-6)) (:func:`clip_factors`), the clipped sum of a ghost layer
   is one matmul, Σ_i c_i Σ_s g_is a_isᵀ; of a materialised layer, Σ_i c_i ∇L_i. An example whose
   norm is not finite (a NaN or inf in its gradient, or a squared norm that overflows) has c_i = 0
   and its tensors are zeroed with ``torch.where`` before the sums (0 · inf is NaN in a product).

Why not Opacus. Its wrappers (GradSampleModule, ghost clipping) clip per ROW of the batch, while a
FusionDP example spans two rows (original and hybrid views) whose gradients must be added BEFORE the
norm is taken; and ghost clipping's second backward is the cost this module avoids. Its per-layer
grad and norm samplers do serve the algebra, but want the example on the first axis: a first
version fed them ``(batch, views, ...)`` copies of every activation and output gradient, and on the
sepsis MLP the copies made the private term slower (a one-off check while writing this, not a
repo benchmark) than the rules below, which read the
``(views, batch, ...)`` tensors in place. Opacus's conv sampler still serves every convolution other
than stride 1, no dilation, one group (see :func:`_conv_grads`).

Privacy contract: as :func:`fusiondp.mechanism.step.per_example_gradients`. The original rows enter only
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

from fusiondp.models import CAML, MLP, LabelwiseLinear

Grads = dict[str, Tensor]

METHODS = ("auto", "bookkeeping", "vmap")
"""``--per_example``: book-keeping where the model allows it (auto), always, or the vmap reference."""


@dataclass
class _Layer:
    """What the per-example algebra needs of one call of one layer."""

    module: nn.Module
    activation: Tensor
    output: Tensor
    activation_version: int
    output_version: int


def _example_sum(t: Tensor, keep: int) -> Tensor:
    """Sum ``(views, batch, *positions, *kept)`` over views and positions: ``(batch, *kept)``."""
    t = t.sum(dim=0)
    return t.sum(dim=tuple(range(1, t.dim() - keep))) if t.dim() > keep + 1 else t


def clip_factors(norms: Tensor, *, max_grad_norm: float) -> Tensor:
    """Per-example clip factors c_i = min(1, C / (‖g_i‖ + 1e-6)), and c_i = 0 where ‖g_i‖ is not finite.

    A NaN or inf anywhere in g_i makes its norm NaN or inf, whose factor would be NaN (and 0 · inf is
    NaN too): such an example contributes nothing. So does a finite gradient whose squared norm
    overflows (in float32, entries of about 1e19 and more): dropping it is as private as clipping it,
    since every example's contribution, zero or clipped, has norm at most C. The decision is made
    here, inside the mechanism, and is not reported: callers must not count the zeros. The vmap
    reference and book-keeping share this rule (:func:`fusiondp.mechanism.step.clip_and_accumulate`).
    """
    return torch.where(torch.isfinite(norms), (max_grad_norm / (norms + 1e-6)).clamp(max=1.0), 0.0)


def excluding(t: Tensor, keep: Tensor, *, dim: int = 0) -> Tensor:
    """``t`` with the slices of examples that are not kept (``keep[i]`` False, along ``dim``) set to 0.

    A mask, not a product: a NaN or inf entry times the factor 0 would still be NaN.
    """
    shape = [1] * t.dim()
    shape[dim] = -1
    return torch.where(keep.view(shape), t, torch.zeros((), dtype=t.dtype, device=t.device))


def _check_layout(t: Tensor, views: int, batch: int, name: str) -> None:
    # A guard, not a proof (a (batch, views) tensor passes when the two sizes agree): the layout is
    # vouched for by registering the model class (see register_row_wise_model). No shape in the
    # message: a padded length can depend on the original notes.
    if t.shape[:2] != (views, batch):
        raise RuntimeError(
            f"layer {name!r} did not get leading (views, batch) dimensions; run with --per_example vmap."
        )


def _linear_ghost_norm_sq(a: Tensor, g: Tensor, *, bias: bool) -> Tensor:
    """‖g aᵀ‖² (+ ‖g‖² for the bias) per example = ‖g‖²·‖a‖², for ONE view of one row per example.

    Only for one view: with two, the example's gradient g_0 a_0ᵀ + g_1 a_1ᵀ can nearly cancel, and
    the ghost form Σ_{v,w} (g_v·g_w)(a_v·a_w) then loses it to round-off while the summed tensor does
    not, so an example could contribute more than C. Two views take the materialised gradient,
    whose norm is that of the very tensor that is summed.
    """
    gg = g[0].pow(2).sum(dim=-1)
    return gg * a[0].pow(2).sum(dim=-1) + (gg if bias else 0)


def _linear_grads(layer: nn.Linear, a: Tensor, g: Tensor) -> Grads:
    """Per-example gradients of an nn.Linear from ``(views, batch, *positions, d)`` tensors."""
    # Example-major (batch, views · positions, features), then one batched matmul over an example's
    # positions: for table rows (two positions) faster than the equivalent einsum, which runs many
    # tiny matmuls (a one-off check while writing this, not a repo benchmark).
    g_rows = g.movedim(1, 0).reshape(g.shape[1], -1, g.shape[-1])
    a_rows = a.movedim(1, 0).reshape(a.shape[1], -1, a.shape[-1])
    grads = {layer.weight: torch.bmm(g_rows.transpose(1, 2), a_rows)}
    if layer.bias is not None:
        grads[layer.bias] = g_rows.sum(dim=1)
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
    the MIMIC shape (128 rows × 1,000 × 512) was slower than this in a one-off check while writing
    it (not a repo benchmark), and its unfolded input alone is 128 × 1,000 × 512 floats (~260 MB).
    """
    if a.shape[0] != views * batch:
        raise RuntimeError("a Conv1d did not get (views · batch) rows; run with --per_example vmap.")
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


ROW_WISE_MODELS: set[type[nn.Module]] = {MLP, CAML}
"""Model classes vouched for: their forward acts on each (view, row) separately, takes inputs with
leading ``(views, batch)`` dimensions (a Conv1d inside sees them flattened view-major), calls each
layer once, positionally, with no in-place change to a layer's input or output, and reads every
parameter only through its layer. Book-keeping is exact only under these conditions, and no hook can
check all of them (a batch mean, a transposed layout or a parameter read directly would pass), so a
class must be registered, after the oracle tests pass for it (tests/test_clipping.py)."""


def register_row_wise_model(cls: type[nn.Module]) -> type[nn.Module]:
    """Vouch for ``cls`` as :data:`ROW_WISE_MODELS` describes (usable as a class decorator)."""
    ROW_WISE_MODELS.add(cls)
    return cls


def unsupported_reason(model: nn.Module) -> str | None:
    """Why book-keeping cannot run this model (then the vmap reference does), or None.

    The model's exact class must be registered (:data:`ROW_WISE_MODELS`); every trainable parameter
    must belong to exactly one module of a type with a rule here (exactly that type: a subclass may
    compute something else), whose parameters are all trainable, in float32 or float64. The answer
    depends on the model's structure only, never on data.
    """
    if type(model) not in ROW_WISE_MODELS:
        return (
            f"model class {type(model).__name__} is not registered as row-wise "
            "(fusiondp.mechanism.clipping.register_row_wise_model, after its oracle tests pass)"
        )
    owners: dict[nn.Parameter, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        params = list(module.parameters(recurse=False))
        if not any(p.requires_grad for p in params):
            continue
        kind = type(module)
        if kind not in (nn.Linear, nn.LayerNorm, nn.Conv1d, LabelwiseLinear):
            return f"module {name!r} ({kind.__name__}) has trainable parameters and no book-keeping rule"
        if not all(p.requires_grad for p in params):
            return f"module {name!r} has both frozen and trainable parameters"
        if any(p.dtype not in (torch.float32, torch.float64) for p in params):
            return f"module {name!r} is not float32/float64 (half precision overflows the norms)"
        if kind is nn.LayerNorm and (module.weight is None or module.bias is None):
            return f"LayerNorm {name!r} without both weight and bias"
        if kind is nn.Conv1d and module.padding_mode != "zeros":
            return f"Conv1d {name!r} with padding_mode {module.padding_mode!r}"
        for p in params:
            if p in owners:
                return f"parameter shared by modules {owners[p]!r} and {name!r}"
            owners[p] = name
    return None


@contextmanager
def _recording(model: nn.Module) -> Iterator[list[_Layer]]:
    tape: list[_Layer] = []

    def record(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if len(inputs) != 1 or not isinstance(output, Tensor):
            raise RuntimeError(f"book-keeping needs {type(module).__name__} called on one positional tensor.")
        tape.append(_Layer(module, inputs[0], output, inputs[0]._version, output._version))

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
    :func:`unsupported_reason`. Returns the same as :func:`fusiondp.mechanism.step.clip_and_accumulate` on
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
            "run with --per_example vmap."
        )
    if any(
        layer.activation._version != layer.activation_version or layer.output._version != layer.output_version
        for layer in tape
    ):
        # An in-place op (e.g. ReLU(inplace=True)) after a layer changed what was recorded.
        raise RuntimeError("a layer's input or output was modified in place; run with --per_example vmap.")
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
            elif views == 1 and a.dim() == 3 and a.shape[-1] + g.shape[-1] <= a.shape[-1] * g.shape[-1]:
                # One row per example (dpsgd on a table): the norm costs d_in + d_out per example
                # against d_in·d_out for the gradient (a one-output head is cheaper materialised),
                # and the clipped sum is one matmul.
                ghost.append((module, a, g))
                norm_sq = norm_sq + _linear_ghost_norm_sq(a, g, bias=module.bias is not None)
                continue
            else:
                grads = _linear_grads(module, a, g)
        for p, gs in grads.items():
            per_example[names[p]] = gs
            norm_sq = norm_sq + gs.flatten(start_dim=1).pow(2).sum(dim=1)

    norms = norm_sq.sqrt()
    factors = clip_factors(norms, max_grad_norm=max_grad_norm)
    keep = torch.isfinite(norms)  # the others have factor 0 and are zeroed, not multiplied by it
    summed = {
        name: torch.einsum("b,b...->...", factors, excluding(gs, keep)) for name, gs in per_example.items()
    }
    for module, a, g in ghost:
        # The activations too: an excluded example's input row may be inf or NaN, and its product
        # with a zero weight in the matmul would be NaN.
        g, a = excluding(g, keep, dim=1), excluding(a, keep, dim=1)
        weighted = (g * factors[:, None]).reshape(-1, g.shape[-1])  # rows (view, example), scaled by c_i
        summed[names[module.weight]] = weighted.T @ a.reshape(-1, a.shape[-1])
        if module.bias is not None:
            summed[names[module.bias]] = weighted.sum(dim=0)
    # The model's parameter order: the noise is drawn parameter by parameter in this order.
    return {name: summed[name] for name in names.values()}, norms
