"""The ten training modes of docs/design.md §3, as data: one step serves them all.

Every mode is a combination of
* a noise-free public term on a uniform batch of a public view (the hybrid rows, or the rows with
  their sensitive columns replaced by N(0, 1) noise), and
* a private term on a Poisson batch of original rows, per-example clipped and noised: either the full
  loss on the original row (``full``, standard DP-SGD) or its difference against the public view
  of the same row (``difference``, FusionDP's gradient calibration), optionally plus the
  representation-consistency regularizer;
combined as ``g = w_pub · g_pub + w_priv · g_priv``. The non-private modes are plain SGD on one view.

A DP mode may first train on the hybrid rows without noise (public pretraining, ``--pretrain_epochs``);
``pretrain_dpsgd`` always does (then DP-SGD on the original rows: "just fine-tune twice"). Pretraining
reads every row's public view and label, so only modes whose guarantee is already feature-level allow it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fusiondp.mechanism.accounting import ADD_REMOVE, REPLACE_ONE, ZERO_OUT

ORIGINAL, HYBRID, NOISE = "original", "hybrid", "noise"


@dataclass(frozen=True)
class ModeSpec:
    name: str
    description: str
    private: bool
    """True when the mode reads original sensitive values only through the DP mechanism."""
    sgd_view: str | None = None
    """For the non-DP modes: the view plain SGD trains on."""
    public_view: str | None = None
    private_loss: str | None = None
    """'full' (ℓ on the original row) or 'difference' (ℓ(original) − ℓ(public view))."""
    uses_regularizer: bool = False
    relation: str | None = None
    """Neighbouring relation the noise is calibrated for (see fusiondp.mechanism.accounting)."""
    guarantee: str = ""
    pretrains: bool = False
    """True when the mode always starts with public pretraining on the hybrid rows."""

    @property
    def allows_pretraining(self) -> bool:
        """Whether public pretraining (noise-free SGD on every row's hybrid view and label) keeps the
        mode's guarantee and meaning: only for DP modes whose guarantee is feature-level already (never
        the sample-level, add/remove dpsgd, nor the non-private modes), and not for the baselines whose
        public view is the noise view (feature-dp, naive_fusion_pub): they stand for training without
        the foundation model's imputations, which pretraining on the hybrid rows would bring in."""
        return self.private and self.relation != ADD_REMOVE and self.public_view != NOISE

    def weights(self, *, alpha: float, mix_weight: float) -> tuple[float, float]:
        """(w_pub, w_priv) of ``g = w_pub · g_pub + w_priv · g_priv``.

        ``alpha`` weighs the split modes' private term; ``mix_weight`` is naive fusion's weight of the
        DP gradient (``--mix_weight``, or ``--beta`` as in the reference command).
        """
        if not self.private:
            return 1.0, 0.0
        if self.private_loss == "full" and self.public_view is None:
            return 0.0, 1.0
        if self.private_loss == "full":  # naive fusion mixes the two gradients
            return 1.0 - mix_weight, mix_weight
        return 1.0, alpha

    def regularizer_weight(self, *, beta: float) -> float:
        return beta if self.uses_regularizer else 0.0


_ZERO_OUT_HYBRID = (
    "(eps, delta) feature-level DP of the sensitive columns; neighbours: one row's sensitive values "
    "replaced by its zero-out values, the values at which its original view equals its hybrid view "
    "(the imputations carried onto the original view's scale, fusiondp.tabular.data.zero_out_values; under "
    "--scaling dp a null record that adds nothing to the statistics either) (zero-out, sensitivity C)"
)
_ZERO_OUT_NOISE = (
    "(eps, delta) feature-level DP of the sensitive columns; neighbours: one row's sensitive values "
    "replaced by the values at which its original view equals its N(0,1) public view (zero-out, "
    "sensitivity C; for one-hot columns no real row has them, so only replace-one is meaningful there)"
)
_REPLACE_ONE = (
    "(eps, delta) feature-level DP of the sensitive columns; neighbours: one row's sensitive values "
    "replaced by any values (replace-one, sensitivity 2C). No sample-level guarantee: the noise-free "
    "public term reads every row's public view and label"
)
_PRETRAIN_REPLACE_ONE = (
    "(eps, delta) feature-level DP of the sensitive columns; neighbours: one row's sensitive values "
    "replaced by any values (replace-one, sensitivity 2C). No sample-level guarantee: the noise-free "
    "pretraining reads every row's hybrid view (public columns, imputed sensitive values) and label"
)
_ADD_REMOVE = (
    "(eps, delta) sample-level DP of whole rows; neighbours: one row added or removed (sensitivity C)"
)
_NEVER_READ = "perfect: original sensitive values are never read"

# fmt: off
MODES: dict[str, ModeSpec] = {m.name: m for m in (
    ModeSpec("sgd_ori", "plain SGD on original rows", False, sgd_view=ORIGINAL,
             guarantee="none: original sensitive values are used without protection"),
    ModeSpec("sgd_hybrid", "plain SGD on hybrid rows", False, sgd_view=HYBRID, guarantee=_NEVER_READ),
    ModeSpec("sgd_pub", "plain SGD, sensitive columns replaced by N(0,1) noise", False, sgd_view=NOISE,
             guarantee=_NEVER_READ),
    ModeSpec("dpsgd", "standard DP-SGD on original rows", True, private_loss="full",
             relation=ADD_REMOVE, guarantee=_ADD_REMOVE),
    ModeSpec("naive_fusion", "(1-w)*SGD(hybrid) + w*DP-SGD(original), w = --mix_weight", True, public_view=HYBRID,
             private_loss="full", relation=REPLACE_ONE, guarantee=_REPLACE_ONE),
    ModeSpec("pretrain_dpsgd", "plain SGD on hybrid rows (--pretrain_epochs), then DP-SGD on original rows",
             True, private_loss="full", relation=REPLACE_ONE, guarantee=_PRETRAIN_REPLACE_ONE,
             pretrains=True),
    ModeSpec("naive_fusion_pub", "(1-w)*SGD(noise view) + w*DP-SGD(original)", True,
             public_view=NOISE, private_loss="full", relation=REPLACE_ONE, guarantee=_REPLACE_ONE),
    ModeSpec("feature-dp", "split step with the noise view, no regularizer", True, public_view=NOISE,
             private_loss="difference", relation=ZERO_OUT, guarantee=_ZERO_OUT_NOISE),
    ModeSpec("calibrated_fusion", "split step with the hybrid view, no regularizer", True,
             public_view=HYBRID, private_loss="difference", relation=ZERO_OUT, guarantee=_ZERO_OUT_HYBRID),
    ModeSpec("fusiondp", "split step with the hybrid view and the regularizer", True, public_view=HYBRID,
             private_loss="difference", uses_regularizer=True, relation=ZERO_OUT,
             guarantee=_ZERO_OUT_HYBRID),
)}
# fmt: on


def get_mode(name: str) -> ModeSpec:
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"unknown --mode {name!r}; choose one of: {', '.join(MODES)}.") from None
