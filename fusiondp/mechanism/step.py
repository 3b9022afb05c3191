"""The split-loss DP-SGD step (docs/design.md §1), written once and parameterised by the mode.

Phases of one step, in order:

1. ``public_gradient``: noise-free gradient of the mean loss on a batch of a public view.
2. ``per_example_gradients``: torch.func (vmap over grad of functional_call) gradients of each
   private term L_i, one forward pass per row that evaluates both views together.
3. ``clip_and_accumulate``: each per-example gradient scaled to norm ≤ C (zeroed where its norm is
   not finite), then summed.
4. ``add_noise``: N(0, σ²C²) on every coordinate of the sum.
5. scale by 1/b (the expected Poisson batch size; or the realised size, for reference runs).
6. ``apply_update``: the optimizer's update with g = w_pub · g_pub + w_priv · g_priv (plain SGD
   θ ← θ − lr · g by default; momentum or Adam, :mod:`fusiondp.mechanism.optim`), at this step's lr
   (``--lr_schedule``), then project onto ‖θ‖ ≤ M.

Privacy contract: the original rows ``x_private`` enter only through phase 2, whose output is
clipped per row (phase 3) before anything else touches it, and the noise of phase 4 is drawn for
every step, including steps whose Poisson batch is empty. Phases 2-3 run on their own random
stream, so not even the NUMBER of random draws they make (which can depend on original values,
e.g. notes' lengths) reaches the public term. The optimizer (phase 6) and its state across steps
see only the combined update g, built after the noise: DP-momentum and DP-Adam are post-processing.

Models used here return ``(logits, representation)`` and accept inputs with leading
``(views, batch)`` dimensions; views of the same row must share their dropout masks (see
:class:`fusiondp.models.ViewSharedDropout`) so that a row whose two views coincide contributes an
exactly zero private term, the condition for the zero-out sensitivity C.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from fusiondp.mechanism.clipping import METHODS, clip_factors, clipped_sum, excluding, unsupported_reason
from fusiondp.mechanism.optim import DEFAULT_MOMENTUM, LR_SCHEDULES, OPTIMIZERS, Optimizer
from fusiondp.mechanism.randomness import derived_state
from fusiondp.mechanism.regularizer import consistency_penalty

LossFn = Callable[[Tensor, Tensor], Tensor]
"""Per-example loss: (logits[..., K], targets[...]) -> loss[...]."""

Grads = dict[str, Tensor]

SAME_VIEW_TOLERANCE = 1e-5
"""Views of a row closer than this in every feature count as equal: the row's private term is 0."""


@dataclass(frozen=True)
class StepConfig:
    """Hyperparameters of one step; built once per run from the mode and the CLI flags."""

    lr: float
    w_pub: float
    w_priv: float
    max_grad_norm: float = 1.0
    noise_multiplier: float = 0.0
    expected_batch_size: float = 1.0
    private_loss: str | None = None  # None, "full" or "difference"
    reg_weight: float = 0.0
    c_h: float | None = None
    max_param_norm: float | None = 10.0
    divide_by_realised_batch: bool = False
    per_example: str = "vmap"  # "bookkeeping" (fusiondp.mechanism.clipping) or "vmap" (the reference)
    optimizer: str = "sgd"  # "sgd" (the reference), "momentum" or "adam" (fusiondp.mechanism.optim)
    momentum: float = DEFAULT_MOMENTUM  # used by "momentum" only
    lr_schedule: str = "constant"  # or "cosine": lr decays to 0 over the run's T steps (the loop's)
    alpha_warmup: float = 0.0  # w_priv ramps up to its value over this fraction of the T steps (the loop's)
    secure_streams: bool = False  # --secure_rng: the private term's forked stream gets a whole secret state
    private_scope: str = "all"  # or "sensitive_inputs": the private term lives on ``private_mask`` only
    private_mask: Mapping[str, Tensor] | None = field(default=None, compare=False, repr=False)
    """0/1 per coordinate of every trainable parameter (:func:`fusiondp.mechanism.scope.sensitive_input_mask`):
    each per-example private gradient is multiplied by it before clipping and the noise is drawn on its
    ones only. Public (it names which input columns are sensitive), so it costs no privacy."""

    def __post_init__(self) -> None:
        if self.per_example not in ("bookkeeping", "vmap"):
            raise ValueError(f"per_example must be 'bookkeeping' or 'vmap', got {self.per_example!r}.")
        if self.private_loss not in (None, "full", "difference"):
            raise ValueError(f"private_loss must be None, 'full' or 'difference', got {self.private_loss!r}.")
        if self.max_grad_norm <= 0:
            raise ValueError(f"--max_grad_norm must be > 0, got {self.max_grad_norm!r}.")
        if self.reg_weight and not (self.c_h and self.c_h > 0):
            raise ValueError(f"the regularizer needs C_h > 0, got c_h={self.c_h!r}.")
        if self.private_loss == "full" and self.reg_weight:
            raise ValueError("the regularizer needs a reference view ('difference' private loss).")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}.")
        if not (0 <= self.momentum < 1):
            raise ValueError(f"--momentum must lie in [0, 1), got {self.momentum!r}.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"--lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}.")
        if not 0 <= self.alpha_warmup <= 1:
            raise ValueError(f"--alpha_warmup must lie in [0, 1], got {self.alpha_warmup!r}.")
        if self.alpha_warmup and self.private_loss != "difference":
            raise ValueError(
                f"--alpha_warmup schedules the split modes' private weight; private_loss is {self.private_loss!r}."
            )
        if (self.private_scope != "all") != (self.private_mask is not None):
            raise ValueError(
                f"private_scope {self.private_scope!r} needs a private_mask exactly when it is not 'all'."
            )
        if self.private_mask is not None and self.per_example != "vmap":
            raise ValueError(
                "a restricted private term (private_mask) runs on the vmap per-example path only."
            )

    def new_optimizer(self) -> Optimizer:
        """A fresh optimizer state for a run with this configuration (the loop makes one per run)."""
        return Optimizer(self.optimizer, momentum=self.momentum)


def trainable_params(model: nn.Module) -> Grads:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def public_gradient(model: nn.Module, x: Tensor, y: Tensor, *, loss_fn: LossFn) -> Grads:
    """∇θ of the mean loss over a batch of PUBLIC rows; no clipping, no noise."""
    params = trainable_params(model)
    logits, _ = model(x)
    loss = loss_fn(logits, y).mean()
    grads = torch.autograd.grad(loss, list(params.values()))
    return {name: g.detach() for name, g in zip(params, grads, strict=True)}


def _differs(x: Tensor, x_ref: Tensor) -> Tensor:
    """Per row (first axis): do the two views differ by more than SAME_VIEW_TOLERANCE anywhere?"""
    return ((x - x_ref).abs() > SAME_VIEW_TOLERANCE).flatten(start_dim=1).any(dim=1)


def private_terms(
    logits: Tensor,
    h: Tensor,
    y: Tensor,
    *,
    loss_fn: LossFn,
    differs: Tensor | None,
    reg_weight: float = 0.0,
    c_h: float | None = None,
) -> Tensor:
    """The private terms L_i of a batch from the model's outputs on ``(views, batch, ...)``.

    One view: ``L_i = ℓ(f(x_i), y_i)``. Two (original, reference): ``ℓ(f(x_i), y_i) − ℓ(f(x̃_i), y_i)
    + reg_weight · min(‖h(x_i) − h(x̃_i)‖², C_h²) / C_h²``, times 0 where ``differs`` is False.
    """
    if differs is None:
        return loss_fn(logits[0], y)
    term = loss_fn(logits[0], y) - loss_fn(logits[1], y)
    if reg_weight:
        term = term + reg_weight * consistency_penalty(h[0], h[1], c_h=c_h)
    # A zero-out neighbour (views equal) must contribute exactly 0, not float round-off: its
    # original values, carried through the original view's scaler, match the hybrid view only
    # to round-off (see fusiondp.tabular.data.zero_out_values).
    return term * differs


def stacked_views(x_private: Tensor, x_reference: Tensor | None) -> Tensor:
    """``(views, batch, ...)``: one forward evaluates both views of every row, sharing dropout masks."""
    return x_private[None] if x_reference is None else torch.stack([x_private, x_reference])


def per_example_gradients(
    model: nn.Module,
    x_private: Tensor,
    x_reference: Tensor | None,
    y: Tensor,
    *,
    loss_fn: LossFn,
    reg_weight: float = 0.0,
    c_h: float | None = None,
) -> Grads:
    """Per-example gradients ∇θ L_i for a batch of B rows, each of shape ``(B, *param.shape)``.

    The reference implementation (torch.func vmap over grad); L_i as in :func:`private_terms`.
    """
    params = {k: v.detach() for k, v in trainable_params(model).items()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def private_term(p: Grads, x: Tensor, x_ref: Tensor | None, target: Tensor) -> Tensor:
        logits, h = functional_call(
            model, (p, buffers), (stacked_views(x[None], None if x_ref is None else x_ref[None]),)
        )
        differs = None if x_ref is None else _differs(x[None], x_ref[None])
        terms = private_terms(
            logits, h, target[None], loss_fn=loss_fn, differs=differs, reg_weight=reg_weight, c_h=c_h
        )
        return terms[0]

    ref_dim = None if x_reference is None else 0
    return vmap(grad(private_term), in_dims=(None, 0, ref_dim, 0), randomness="different")(
        params, x_private, x_reference, y
    )


def per_example_norms(per_example: Grads) -> Tensor:
    flat = [g.flatten(start_dim=1) for g in per_example.values()]
    return torch.cat(flat, dim=1).norm(dim=1)


def clip_and_accumulate(per_example: Grads, *, max_grad_norm: float) -> tuple[Grads, Tensor]:
    """Σ_i clip_C(g_i) and the per-example norms before clipping.

    The factor min(1, C / (‖g_i‖ + 1e-6)) keeps every clipped norm ≤ C, as Opacus does; an example
    whose norm is not finite (NaN or inf in g_i, or an overflowing squared norm) contributes zero
    (:func:`fusiondp.mechanism.clipping.clip_factors`), its gradient zeroed rather than multiplied by 0.
    """
    norms = per_example_norms(per_example)
    factors = clip_factors(norms, max_grad_norm=max_grad_norm)
    keep = torch.isfinite(norms)
    summed = {
        name: torch.einsum("b,b...->...", factors, excluding(g, keep)) for name, g in per_example.items()
    }
    return summed, norms


def add_noise(summed: Grads, *, std: float, generator: torch.Generator) -> Grads:
    """Add N(0, std²) independently to every coordinate."""
    if std == 0:
        return summed
    return {
        name: g + torch.normal(0.0, std, size=g.shape, generator=generator, device=g.device, dtype=g.dtype)
        for name, g in summed.items()
    }


def clipped_private_sum(
    model: nn.Module,
    x_private: Tensor,
    x_reference: Tensor | None,
    y: Tensor,
    *,
    cfg: StepConfig,
    loss_fn: LossFn,
) -> tuple[Grads, Tensor]:
    """Σ_i clip_C(∇θ L_i) and the norms, by ``cfg.per_example``: book-keeping or the vmap reference."""
    if cfg.per_example == "vmap":
        per_example = per_example_gradients(
            model, x_private, x_reference, y, loss_fn=loss_fn, reg_weight=cfg.reg_weight, c_h=cfg.c_h
        )
        if cfg.private_mask is not None:  # restricted before the norm: the clipped vector is the masked one
            per_example = {k: g * cfg.private_mask[k] for k, g in per_example.items()}
        return clip_and_accumulate(per_example, max_grad_norm=cfg.max_grad_norm)
    reason = unsupported_reason(model)
    if reason is not None:
        raise ValueError(f"book-keeping cannot run this model: {reason}. Use --per_example vmap.")
    differs = None if x_reference is None else _differs(x_private, x_reference)

    def terms(logits: Tensor, h: Tensor) -> Tensor:
        return private_terms(
            logits, h, y, loss_fn=loss_fn, differs=differs, reg_weight=cfg.reg_weight, c_h=cfg.c_h
        )

    return clipped_sum(model, stacked_views(x_private, x_reference), terms, max_grad_norm=cfg.max_grad_norm)


def per_example_method(model: nn.Module, requested: str) -> tuple[str, str]:
    """(``"bookkeeping"`` or ``"vmap"``, why) for ``--per_example auto|bookkeeping|vmap``.

    ``auto`` takes book-keeping where :func:`fusiondp.mechanism.clipping.unsupported_reason` allows, else the
    vmap reference (the reason is returned, for the log and the record); ``bookkeeping`` on a model it
    cannot run is an error.
    """
    if requested not in METHODS:
        raise ValueError(f"--per_example must be one of {METHODS}, got {requested!r}.")
    if requested == "vmap":
        return "vmap", "requested (--per_example vmap)"
    reason = unsupported_reason(model)
    if reason is None:
        return "bookkeeping", "every trainable layer has a book-keeping rule"
    if requested == "bookkeeping":
        raise ValueError(f"--per_example bookkeeping cannot run this model: {reason}. Use auto or vmap.")
    return "vmap", f"fallback to the vmap reference: {reason}"


@contextmanager
def _own_random_stream(
    generator: torch.Generator, device: torch.device, *, full_state: bool = False
) -> Iterator[None]:
    """Run the block on a forked global RNG, seeded by one draw from ``generator``.

    Dropout inside the per-example private term draws from the global RNG, and how many numbers it
    draws depends on the batch's padded width, which for notes depends on the ORIGINAL notes'
    lengths. Forking keeps those draws from shifting the global stream that the noise-free public
    term uses next; the seed costs exactly one draw of ``generator`` per step, whatever the data.
    ``full_state`` (secure runs): the forked CPU stream's whole Mersenne Twister state is drawn from
    ``generator`` (625 draws a step), since ``manual_seed`` keeps 32 bits of a seed; seeded runs keep
    the one-draw seed, so their numbers do not move.
    """
    state = derived_state(generator) if full_state else None  # a secure run: a whole secret CPU state
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if state is not None:
            torch.random.default_generator.set_state(state)
        else:
            torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def private_gradient(
    model: nn.Module,
    x_private: Tensor,
    x_reference: Tensor | None,
    y: Tensor,
    *,
    cfg: StepConfig,
    loss_fn: LossFn,
    generator: torch.Generator,
) -> tuple[Grads, Tensor]:
    """g_priv = (Σ_i clip_C(∇L_i) + N(0, σ²C²)) / b for one Poisson batch (which may be empty)."""
    params = trainable_params(model)
    batch_size = x_private.shape[0]
    with _own_random_stream(generator, x_private.device, full_state=cfg.secure_streams):
        if batch_size == 0:
            summed = {k: torch.zeros_like(p) for k, p in params.items()}
            norms = x_private.new_zeros(0)
        else:
            summed, norms = clipped_private_sum(model, x_private, x_reference, y, cfg=cfg, loss_fn=loss_fn)
    noised = add_noise(summed, std=cfg.noise_multiplier * cfg.max_grad_norm, generator=generator)
    if (
        cfg.private_mask is not None
    ):  # outside the mask the clipped sum is exactly 0: no noise is needed there
        noised = {k: g * cfg.private_mask[k] for k, g in noised.items()}
    divisor = max(batch_size, 1) if cfg.divide_by_realised_batch else cfg.expected_batch_size
    return {k: g / divisor for k, g in noised.items()}, norms


@torch.no_grad()
def apply_update(
    model: nn.Module,
    update: Grads,
    *,
    lr: float,
    max_param_norm: float | None,
    optimizer: Optimizer | None = None,
) -> None:
    """The optimizer's step with ``update`` at ``lr`` (default plain SGD: θ ← θ − lr · update), then
    project θ onto the ball ‖θ‖₂ ≤ M (global norm over all parameters)."""
    params = trainable_params(model)
    (optimizer or Optimizer("sgd")).update(params, update, lr=lr)
    if max_param_norm:
        total = torch.sqrt(sum(p.pow(2).sum() for p in params.values()))
        if total > max_param_norm:
            for p in params.values():
                p.mul_(max_param_norm / total)


def fusion_step(
    model: nn.Module,
    *,
    x_public: Tensor | None,
    y_public: Tensor | None,
    x_private: Tensor | None,
    x_reference: Tensor | None,
    y_private: Tensor | None,
    cfg: StepConfig,
    loss_fn: LossFn,
    generator: torch.Generator,
    optimizer: Optimizer | None = None,
    lr: float | None = None,
    w_priv: float | None = None,
) -> dict:
    """One step: g = w_pub · g_pub + w_priv · g_priv, the optimizer's update, the projection.

    ``x_public`` is a batch of a public view (unused when ``cfg.w_pub == 0``); ``x_private`` the
    Poisson batch of ORIGINAL rows and ``x_reference`` the same rows in the public view (only for
    the 'difference' private loss). Returns the private batch size (nothing computed from private values).

    ``optimizer``: the run's :class:`fusiondp.mechanism.optim.Optimizer` (``cfg.new_optimizer()``, kept
    by the caller across steps); it may be left out only for ``cfg.optimizer == "sgd"``, which has no
    state. It receives g only after the private term's noise was added (drawn on every step), so its
    state is post-processing. ``lr``: this step's learning rate (the schedule's; default ``cfg.lr``).
    ``w_priv``: this step's private weight (``--alpha_warmup``'s; default ``cfg.w_priv``), applied to
    the private term after its noise: a public number, post-processing.
    """
    if optimizer is None:
        if cfg.optimizer != "sgd":
            raise ValueError(
                f"--optimizer {cfg.optimizer} keeps state across steps: pass the run's optimizer "
                "(cfg.new_optimizer(), made once per run) to fusion_step."
            )
        optimizer = cfg.new_optimizer()
    elif optimizer.kind != cfg.optimizer:
        raise ValueError(f"the optimizer given is {optimizer.kind!r} but cfg.optimizer is {cfg.optimizer!r}.")
    params = trainable_params(model)
    update = {k: torch.zeros_like(p) for k, p in params.items()}
    stats: dict = {}
    if cfg.w_pub:
        for k, g in public_gradient(model, x_public, y_public, loss_fn=loss_fn).items():
            update[k] += cfg.w_pub * g
    if cfg.private_loss is not None:
        ref = x_reference if cfg.private_loss == "difference" else None
        g_priv, norms = private_gradient(
            model, x_private, ref, y_private, cfg=cfg, loss_fn=loss_fn, generator=generator
        )
        weight = cfg.w_priv if w_priv is None else w_priv
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"the private term's weight must be finite and >= 0, got {weight!r}.")
        if weight != cfg.w_priv and cfg.private_loss != "difference":
            raise ValueError(
                f"a per-step private weight ({weight!r}, cfg.w_priv {cfg.w_priv!r}) schedules the split modes' "
                f"difference term only; private_loss is {cfg.private_loss!r}."
            )
        for k, g in g_priv.items():
            update[k] += weight * g
        # Only the batch size leaves this function. Statistics of the per-example norms (such as
        # the clipped fraction) are functions of the original sensitive values that bypass the noise.
        stats = {"private_batch_size": int(norms.numel())}
    apply_update(
        model,
        update,
        lr=cfg.lr if lr is None else lr,
        max_param_norm=cfg.max_param_norm,
        optimizer=optimizer,
    )
    return stats
