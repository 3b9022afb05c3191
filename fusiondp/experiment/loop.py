"""The training loop every dataset script shares: Poisson private batches, exactly T steps, evaluation.

Sampling: DP modes draw their private batch by Poisson sampling (each row independently with
probability q = b/N), as the accountant assumes, and their public batch uniformly without
replacement; the non-private modes use shuffled batches of exactly b rows. Every mode runs exactly
T = round(epochs · N / b) steps and is evaluated on every val and test row at each epoch boundary.
The run's optimizer state (``cfg.optimizer``: momentum buffer, Adam's moments) is made here once and
kept across the T steps; step t's learning rate follows ``cfg.lr_schedule`` over those T steps, and
the split modes' private weight ``cfg.alpha_warmup``'s ramp.

The loop reads its data through the small :class:`TrainingData` protocol, so tables
(:class:`fusiondp.tabular.data.TabularData`) and notes share it, and with it the one DP step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from fusiondp.mechanism.modes import ModeSpec, get_mode
from fusiondp.mechanism.optim import scheduled_lr, warmed_up_weight
from fusiondp.mechanism.step import LossFn, StepConfig, fusion_step

Evaluator = Callable[[nn.Module], dict[str, dict[str, float]]]


class TrainingData(Protocol):
    """What the loop needs of a data set: row-aligned views of the training rows, labels, evaluation.

    Views are named ``original`` (true sensitive values), ``hybrid`` (imputed) and, where it exists,
    ``noise``. Only ``batch(("original", ...), rows)`` reads original sensitive values, and the loop
    hands what it returns to the DP step's private term only.
    """

    y: Tensor
    headline_metric: str

    @property
    def num_rows(self) -> int: ...

    @property
    def num_features(self) -> int | None: ...

    def batch(self, views: Sequence[str], rows: Tensor) -> list[Tensor]:
        """The rows of each view, as tensors of one common shape (padded jointly where needed)."""
        ...

    def evaluate(self, model: nn.Module) -> dict[str, dict[str, float]]:
        """``{"val": metrics, "test": metrics}`` on every evaluation row."""
        ...

    def public_c_h(self, model: nn.Module, *, generator: torch.Generator) -> float:
        """C_h estimated from public data only."""
        ...

    def private_c_h(self, model: nn.Module) -> float:
        """The reference's C_h from original rows: NOT PRIVATE."""
        ...

    def to(self, device: torch.device) -> TrainingData: ...


def epoch_boundaries(*, steps: int, epochs: float) -> list[int]:
    """Step counts after which an epoch ends (the last one is always T)."""
    n_epochs = max(1, round(epochs))
    bounds = sorted({max(1, round((e + 1) * steps / n_epochs)) for e in range(n_epochs)})
    bounds[-1] = steps
    return bounds


class BatchSampler:
    """Row indices for each step, from a dedicated seeded generator (independent of the data)."""

    def __init__(
        self, num_rows: int, *, seed: int | None = None, generator: torch.Generator | None = None
    ) -> None:
        if (seed is None) == (generator is None):
            raise ValueError("give BatchSampler a seed (experiment mode) or a generator (secure), not both.")
        self.num_rows = num_rows
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self._stream = torch.empty(0, dtype=torch.long)

    def poisson(self, sample_rate: float) -> torch.Tensor:
        mask = torch.rand(self.num_rows, generator=self.generator) < sample_rate
        return mask.nonzero().squeeze(1)

    def uniform(self, size: int) -> torch.Tensor:
        return torch.randperm(self.num_rows, generator=self.generator)[: min(size, self.num_rows)]

    def shuffled(self, size: int) -> torch.Tensor:
        """Consecutive slices of a stream of random permutations: every batch has ``size`` rows."""
        while len(self._stream) < size:
            self._stream = torch.cat([self._stream, torch.randperm(self.num_rows, generator=self.generator)])
        batch, self._stream = self._stream[:size], self._stream[size:]
        return batch


def train(
    model: nn.Module,
    data: TrainingData,
    *,
    mode: ModeSpec,
    cfg: StepConfig,
    steps: int,
    epochs: float,
    batch_size: int,
    public_batch_size: int,
    seed: int,
    loss_fn: LossFn,
    evaluate: Evaluator,
    progress: bool = True,
    noise_seed: int | None = None,
    sampler: BatchSampler | None = None,
    noise_generator: torch.Generator | None = None,
) -> tuple[list[dict], float]:
    """Run exactly ``steps`` steps; return the per-epoch log and the training seconds (eval excluded).

    Batches come from ``sampler`` (default: a new one seeded by ``seed``; a secure run passes one filled
    from OS entropy). Public pretraining has its own sampler, seeded by ``--seed``: its log is published,
    so it never draws from the DP steps' secret stream.
    The DP noise comes from its own generator: ``noise_generator`` (a secure run's, filled from OS
    entropy), else one seeded by ``noise_seed`` (default ``seed + 1``). One
    optimizer state (``cfg.new_optimizer()``) serves all steps; step t (0-based) runs at
    ``scheduled_lr(cfg.lr, cfg.lr_schedule, step=t, steps=steps)`` with private weight
    ``warmed_up_weight(cfg.w_priv, warmup=cfg.alpha_warmup, step=t, steps=steps)``.
    """
    device = data.y.device
    sampler = sampler or BatchSampler(data.num_rows, seed=seed)
    if noise_generator is None:
        noise_generator = torch.Generator(device=device).manual_seed(
            seed + 1 if noise_seed is None else noise_seed
        )
    sample_rate = batch_size / data.num_rows
    optimizer = cfg.new_optimizer()
    bounds = epoch_boundaries(steps=steps, epochs=epochs)
    log: list[dict] = []
    train_seconds = 0.0
    model.train()
    bar = tqdm(total=steps, desc=mode.name, disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        batch: dict = {
            "x_public": None,
            "y_public": None,
            "x_private": None,
            "x_reference": None,
            "y_private": None,
        }
        if not mode.private:
            rows = sampler.shuffled(batch_size).to(device)
            (batch["x_public"],) = data.batch([mode.sgd_view], rows)
            batch["y_public"] = data.y[rows]
        else:
            if cfg.w_pub:
                rows = sampler.uniform(public_batch_size).to(device)
                (batch["x_public"],) = data.batch([mode.public_view], rows)
                batch["y_public"] = data.y[rows]
            rows = sampler.poisson(sample_rate).to(device)
            batch["y_private"] = data.y[rows]
            if mode.private_loss == "difference":
                batch["x_private"], batch["x_reference"] = data.batch(["original", mode.public_view], rows)
            else:
                (batch["x_private"],) = data.batch(["original"], rows)
        lr = scheduled_lr(cfg.lr, cfg.lr_schedule, step=step - 1, steps=steps)
        w_priv = warmed_up_weight(cfg.w_priv, warmup=cfg.alpha_warmup, step=step - 1, steps=steps)
        fusion_step(
            model,
            **batch,
            cfg=cfg,
            loss_fn=loss_fn,
            generator=noise_generator,
            optimizer=optimizer,
            lr=lr,
            w_priv=w_priv,
        )
        bar.update(1)
        if step in bounds:
            train_seconds += time.perf_counter() - start
            metrics = evaluate(model)
            entry = {"epoch": bounds.index(step) + 1, "step": step}
            for split, values in metrics.items():
                entry.update({f"{split}_{k}": v for k, v in values.items()})
            log.append(entry)
            key = f"val_{data.headline_metric}"
            bar.set_postfix({key: f"{entry.get(key, float('nan')):.4f}"})
            start = time.perf_counter()
    bar.close()
    return log, train_seconds


def public_pretraining(
    model: nn.Module,
    data: TrainingData,
    *,
    cfg: StepConfig,
    steps: int,
    epochs: float,
    batch_size: int,
    sampler: BatchSampler,
    loss_fn: LossFn,
    evaluate: Evaluator,
    progress: bool = True,
) -> tuple[list[dict], float]:
    """Plain SGD on the hybrid rows for ``steps`` steps: exactly the loop of ``sgd_hybrid`` (shuffled
    batches of ``batch_size`` rows from ``sampler``, ``cfg``'s optimizer, lr and schedule over these
    steps), so that a run with public pretraining starts from the model sgd_hybrid would train.

    Privacy contract: reads only the hybrid view and the labels (``data.batch(["hybrid"], ...)``),
    never an original sensitive value; ``cfg`` must be noise-free with no private term.
    """
    if cfg.private_loss is not None or cfg.w_priv or cfg.noise_multiplier:
        raise ValueError(
            "public pretraining is plain SGD: its step config must have no private term and no noise "
            f"(got private_loss={cfg.private_loss!r}, w_priv={cfg.w_priv!r}, noise_multiplier={cfg.noise_multiplier!r})."
        )
    return train(
        model,
        data,
        mode=get_mode("sgd_hybrid"),
        cfg=cfg,
        steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        public_batch_size=batch_size,
        seed=0,  # unused: the batches come from ``sampler``
        loss_fn=loss_fn,
        evaluate=evaluate,
        progress=progress,
        sampler=sampler,
    )
