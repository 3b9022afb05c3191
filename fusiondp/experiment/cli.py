"""Command-line flags shared by every training script (reference flag names), and run set-up."""

from __future__ import annotations

import argparse
import random
from typing import Any

import numpy as np
import torch

from fusiondp.mechanism.accounting import ACCOUNTANTS, NEIGHBOURING_FLAGS
from fusiondp.mechanism.modes import MODES
from fusiondp.mechanism.optim import DEFAULT_MOMENTUM, LR_SCHEDULES, OPTIMIZERS
from fusiondp.mechanism.scaling import SCALING_SOURCES
from fusiondp.mechanism.scope import PRIVATE_SCOPES
from fusiondp.mechanism.tuning import DISTRIBUTIONS as TRIAL_DISTRIBUTIONS
from fusiondp.mechanism.tuning import TUNING_PROTOCOLS


def add_training_args(parser: argparse.ArgumentParser, **defaults: Any) -> argparse.ArgumentParser:
    """Add the flags every training script shares; ``defaults`` overrides per-dataset defaults.

    A default naming no flag of the parser raises: a misspelt one would silently leave the flag at its
    generic default (and change the settings that ``--skip_existing`` and sweeps match on).
    """
    g = parser.add_argument_group("training")
    g.add_argument(
        "--mode",
        default="fusiondp",
        choices=list(MODES),
        metavar="MODE",
        help=f"one of: {', '.join(MODES)} (default: %(default)s)",
    )
    g.add_argument("--epochs", type=float, default=10, help="T = round(epochs*N/batch_size) steps are run")
    g.add_argument(
        "--batch_size",
        type=int,
        default=128,
        help="expected Poisson batch size b of the private term (q = b/N); SGD batch size",
    )
    g.add_argument(
        "--public_batch_size",
        type=int,
        default=4096,
        help="rows of the public view per step, uniform without replacement (at most N)",
    )
    g.add_argument("--lr", type=float, default=0.05)
    g.add_argument("--alpha", type=float, default=1.0, help="weight of the private gradient (split modes)")
    g.add_argument(
        "--beta",
        type=float,
        default=1.0,
        help="regularizer weight (fusiondp); in naive_fusion* the mixing weight of the DP gradient "
        "when --mix_weight is not given (the reference command's meaning). The record's beta_meaning "
        "says which",
    )
    g.add_argument(
        "--mix_weight",
        type=float,
        default=None,
        help="naive_fusion*: weight w of the DP gradient in (1-w)*g_public + w*g_DP, in [0, 1] "
        "(default: --beta, as the reference)",
    )
    g.add_argument(
        "--max_param_norm",
        type=float,
        default=10.0,
        help="project parameters onto the ball ||theta|| <= M after each step (0 disables)",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--device", default="auto", help="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ..."
    )
    g.add_argument(
        "--optimizer",
        default=None,
        choices=OPTIMIZERS,
        help="update rule applied to g = w_pub*g_pub + w_priv*g_priv in every mode: sgd, momentum "
        "(heavy ball, --momentum) or adam (betas 0.9/0.999, eps 1e-8). Momentum and Adam see only the "
        "already-noised update (post-processing) (default: plain SGD, the reference)",
    )
    g.add_argument(
        "--momentum",
        type=float,
        default=None,
        help=f"--optimizer momentum: its coefficient, in [0, 1) (default: {DEFAULT_MOMENTUM})",
    )
    g.add_argument(
        "--lr_schedule",
        default=None,
        choices=LR_SCHEDULES,
        help="constant, or cosine: lr decays from --lr towards 0 over the run's T steps (default: constant)",
    )
    g.add_argument(
        "--sensitive_scale",
        type=float,
        default=None,
        help="tabular data: public constant s > 0 multiplying the sensitive columns' standardised values "
        "(and one-hot or ordinal blocks) in every view, training, val and test; the input scale is a "
        "DP-SGD hyperparameter (Sun, Suresh & Menon, ICLR 2024). Notes runs refuse it (default: 1)",
    )

    g.add_argument(
        "--pretrain_epochs",
        type=float,
        default=None,
        help="public pretraining: plain SGD on the hybrid rows (public columns, imputed sensitive values, "
        "labels) for this many epochs before the DP steps, with --batch_size, --optimizer and "
        "--lr_schedule as sgd_hybrid would use them. Feature-level modes only (the split modes, "
        "naive_fusion*, pretrain_dpsgd); refused by dpsgd, whose guarantee is sample-level "
        "(default: --epochs for pretrain_dpsgd, none for the others)",
    )
    g.add_argument(
        "--pretrain_lr", type=float, default=None, help="learning rate of public pretraining (default: --lr)"
    )

    g.add_argument(
        "--alpha_warmup",
        type=float,
        default=None,
        help="split modes: F in [0, 1]; the private weight alpha rises linearly to its value over the first "
        "ceil(F*T) of the run's T steps (alpha*(t+1)/ceil(F*T) at step t), so the objective moves from the "
        "hybrid rows' loss towards the original rows' as training goes on. A public schedule applied after "
        "the noise: no privacy cost (default: 0, alpha constant)",
    )
    g.add_argument(
        "--private_scope",
        default=None,
        choices=PRIVATE_SCOPES,
        help="split modes: where the clipped, noised difference term acts: all parameters, or only the "
        "first layer's weights on the sensitive input columns (sensitive_inputs: far less noise, the rest "
        "of the model trained by the public term alone; vmap per-example path; tabular data) "
        "(default: all)",
    )

    p = parser.add_argument_group("privacy")
    p.add_argument("--epsilon", type=float, default=2.0, help="target epsilon of the DP modes")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--max_grad_norm", type=float, default=1.0, help="per-example clip norm C")
    p.add_argument(
        "--accountant",
        default="pld",
        choices=ACCOUNTANTS,
        help="accountant that calibrates sigma and reports epsilon: dp-accounting pld (tightest; every "
        "relation), Opacus prv or rdp (the reference's; add/remove = zero-out only) (default: %(default)s)",
    )
    p.add_argument(
        "--neighbouring",
        default=None,
        choices=list(NEIGHBOURING_FLAGS),
        help="relation sigma is calibrated for in the split modes (feature-dp, calibrated_fusion, "
        "fusiondp): zero_out (one row's sensitive values replaced by its imputed ones, sensitivity C; "
        "the default) or replace_one (arbitrary new values, sensitivity 2C; needs --accountant pld). "
        "dpsgd and naive_fusion* keep their own relation and record the flag as ignored. Every "
        "record states epsilon under both relations.",
    )
    p.add_argument(
        "--c_h",
        type=float,
        default=None,
        help="clip C_h of the regularizer; default: estimated from hybrid rows (public)",
    )
    p.add_argument(
        "--c_h_from_private",
        action="store_true",
        help="reference compatibility: estimate C_h from ORIGINAL rows. NOT PRIVATE; the "
        "result record marks the run as outside the guarantee",
    )
    p.add_argument(
        "--divide_by_realised_batch",
        action="store_true",
        help="reference compatibility: divide the private sum by |B| instead of b",
    )
    p.add_argument(
        "--secure_rng",
        action="store_true",
        help="draw the Poisson sampler's and the DP noise's randomness from OS entropy, never recorded: "
        "the only way to train a model you may release with the stated guarantee. By default both "
        "are seeded from --seed (experiment mode: reproducible, and the record says the guarantee "
        "does not hold, since anyone who knows the seed can replay them). Model init, dropout of the "
        "public term and the public batches' order may still follow --seed",
    )
    p.add_argument(
        "--scaling",
        default="support",
        choices=SCALING_SOURCES,
        help="source of the ORIGINAL view's sensitive-column statistics (training rows, val, test): "
        "support (the public support set's true values; free), dp (Gaussian-mechanism estimate from "
        "the training rows, clipped to the script's declared ranges, composed into epsilon), or "
        "private (the training rows' own statistics, as the authors do: NOT PRIVATE, recorded as "
        "outside the guarantee). The hybrid view always uses its own rows' statistics "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--scaling_noise_multiplier",
        type=float,
        default=20.0,
        help="--scaling dp: noise std of the statistics in units of their sensitivity (larger: less "
        "of the budget, noisier scales) (default: %(default)s)",
    )
    p.add_argument(
        "--max_private_noise",
        type=float,
        default=3.0,
        help="cap kappa on alpha*sigma, the std of the private term's noise in units of C/b (split modes): "
        "alpha is lowered to kappa/sigma when sigma is large, so that at small epsilon the private term "
        "fades instead of drowning the public one. Public (sigma is), costs no privacy. 0: the fixed "
        "--alpha of the reference (default: %(default)s)",
    )
    p.add_argument(
        "--per_example",
        choices=("auto", "bookkeeping", "vmap"),
        default="auto",
        help="how the private term's per-example clipping is computed: book-keeping (one backward, ghost "
        "norms; fusiondp/mechanism/clipping.py), the torch.func vmap reference, or auto (book-keeping where every "
        "trainable layer has a rule, else vmap, said in the log and the record). Same numbers up to "
        "float summation order (default: %(default)s)",
    )

    t = parser.add_argument_group("tuning (set by scripts/tune.py for each trial of a study)")
    t.add_argument(
        "--tuning_protocol",
        choices=TUNING_PROTOCOLS,
        default=None,
        help="this run is one trial of a tuning study: idealised (sigma for --epsilon per run, the cost "
        "of tuning NOT counted, as papers usually report) or honest (--epsilon is the TOTAL of releasing "
        "the best of K random trials, Papernot & Steinke; sigma calibrated for it; needs --accountant rdp)",
    )
    t.add_argument(
        "--tuning_trials",
        choices=TRIAL_DISTRIBUTIONS,
        default=None,
        help="honest: the distribution of the number of trials K (default: truncated_negative_binomial)",
    )
    t.add_argument(
        "--tuning_mean_trials", type=float, default=None, help="honest: the mean of K (default: 10)"
    )
    t.add_argument(
        "--tuning_eta",
        type=float,
        default=None,
        help="honest, truncated negative binomial: eta (default: 0.5)",
    )
    t.add_argument("--tuning_study", default=None, help="the study's name (recorded, never used)")

    o = parser.add_argument_group("output")
    o.add_argument(
        "--results_json",
        default=None,
        help="where the finished run's record goes: a results folder (an existing folder, a path ending in "
        "/ or without extension: one JSON file per run, written atomically; for clusters) or a JSON-lines "
        "file such as results/runs.jsonl (one line appended per run)",
    )
    o.add_argument("--no_progress", action="store_true", help="no progress bar")
    o.add_argument(
        "--skip_existing",
        action="store_true",
        help="do nothing if --results_json (folder or file) already holds a run with exactly these settings",
    )
    flags = {action.dest for action in parser._actions}
    unknown = sorted(set(defaults) - flags)
    if unknown:
        raise ValueError(f"add_training_args: defaults {unknown} name no flag of this parser.")
    parser.set_defaults(**defaults)
    return parser


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA, but torch sees no GPU; use --device cpu.")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_main(main, parser: argparse.ArgumentParser) -> None:
    """Parse the command line and run ``main(args)``; bad input ends with one clear line, not a traceback."""
    args = parser.parse_args()
    try:
        main(args)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
