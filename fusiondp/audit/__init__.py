"""Empirical privacy audit of the sensitive features (docs/design.md §4), in the manner of jax_privacy.

* :mod:`~fusiondp.audit.bound`: the one-run lower bound (Steinke, Nasr and Jagielski, NeurIPS 2023):
  canary scores and coins in, ε_lower out. Pure arithmetic.
* :mod:`~fusiondp.audit.canaries`: input-space canaries planted in the training rows of ONE run through
  :func:`fusiondp.experiment.run.run_experiment`, their white-box scores, and the neighbour-invariance check
  of what is computed outside the mechanism.
* :mod:`~fusiondp.audit.step_canaries`: gradient-space ("Dirac") canaries for the private step itself.
* :mod:`~fusiondp.audit.attack`: attribute inference with and without the model.
* :mod:`~fusiondp.audit.controls`: the negative controls, explicit named variants (a step without
  noise or clipping, C_h or scalers from original rows) that the audit must flag.
* :mod:`~fusiondp.audit.run`: :func:`audit_once`, all of the above for one (mode, ε, seed).

The grid over modes, ε and seeds and its Markdown table are the scripts' (``scripts/audit_common.py``).

Privacy contract: this package is the AUDITOR. It reads original sensitive values on purpose (to plant
canaries, to score them, to measure attacks). Nothing here is private, and nothing here may feed a
training path other than through the canary-planted data it hands to ``run_experiment``.
"""

from fusiondp.audit.attack import attribute_inference
from fusiondp.audit.bound import audit_p_value, canary_audit, epsilon_lower_bound
from fusiondp.audit.canaries import (
    STATISTICS,
    AuditedRun,
    CanaryPlan,
    TabularTask,
    audited_run,
    canary_scores,
    plan_canaries,
    plant_canaries,
    public_state_check,
)
from fusiondp.audit.controls import (
    C_H_FROM_PRIVATE,
    CORRECT,
    NO_CLIPPING,
    NO_NOISE,
    PIPELINE_CONTROLS,
    SCALER_FROM_PRIVATE,
    STEP_VARIANTS,
    PipelineControl,
    StepVariant,
)
from fusiondp.audit.run import audit_once, claimed_epsilon
from fusiondp.audit.step_canaries import step_canary_audit

__all__ = [
    "CORRECT",
    "C_H_FROM_PRIVATE",
    "NO_CLIPPING",
    "NO_NOISE",
    "PIPELINE_CONTROLS",
    "SCALER_FROM_PRIVATE",
    "STATISTICS",
    "STEP_VARIANTS",
    "AuditedRun",
    "CanaryPlan",
    "PipelineControl",
    "StepVariant",
    "TabularTask",
    "attribute_inference",
    "audit_once",
    "audit_p_value",
    "audited_run",
    "canary_audit",
    "canary_scores",
    "claimed_epsilon",
    "epsilon_lower_bound",
    "plan_canaries",
    "plant_canaries",
    "public_state_check",
    "step_canary_audit",
]
