"""One audited run: plant, train once, score, bound, attack, check the public state (docs/design.md §4).

Privacy contract: the AUDITOR; it reads original sensitive values on purpose and writes nothing but
the record it returns.
"""

from __future__ import annotations

import math

from fusiondp.audit.attack import attribute_inference
from fusiondp.audit.bound import canary_audit
from fusiondp.audit.canaries import (
    TabularTask,
    audited_run,
    canary_scores,
    plan_canaries,
    public_state_check,
)
from fusiondp.audit.controls import CORRECT, PipelineControl, StepVariant
from fusiondp.audit.step_canaries import step_canary_audit
from fusiondp.experiment.config import RunConfig


def claimed_epsilon(record: dict) -> float:
    """The feature-level ε the run claims for a zero-out change (∞ for sgd_ori, 0 for modes that
    never read the original sensitive values)."""
    if record["mode"] == "sgd_ori":
        return math.inf
    if record.get("sigma") is None:
        return 0.0
    return float(record["epsilon_zero_out"])


def audit_once(
    task: TabularTask,
    config: RunConfig,
    *,
    canaries: int,
    guesses: int,
    confidence: float = 0.95,
    statistic: str = "loss",
    attack_rows: int = 2000,
    control: PipelineControl | None = None,
    step_variant: StepVariant = CORRECT,
    attack: bool = True,
) -> dict:
    """Plant, train once, score, bound, attack; return the training record with an ``audit`` entry.

    ``control``: a leak outside the mechanism built into this run (:mod:`fusiondp.audit.controls`);
    ``step_variant``: the private step the step-canary audit runs with the run's (σ, q, T, C).
    Privacy contract: the auditor; reads original sensitive values on purpose (see the modules).
    """
    plan = plan_canaries(task, m=canaries, seed=config.seed + 1000)
    run = audited_run(task, config, plan, control=control)
    scores = canary_scores(run, task, plan, statistic=statistic)
    audit = {
        "statistic": statistic,
        "claimed_epsilon": claimed_epsilon(run.record),
        **canary_audit(scores, plan.is_in, k=guesses, delta=config.delta, confidence=confidence),
        **public_state_check(task, config, plan, control=control),
    }
    if run.record.get("sigma") is not None:
        audit["step_audit"] = step_canary_audit(
            noise_multiplier=run.record["sigma"],
            sample_rate=run.record["sample_rate"],
            steps=run.record["steps"],
            max_grad_norm=run.record["max_grad_norm"],
            claimed_epsilon=audit["claimed_epsilon"],
            delta=config.delta,
            seed=config.seed,
            variant=step_variant,
        )
    if attack:
        audit["attribute_inference"] = attribute_inference(
            run, task, plan, max_rows=attack_rows, seed=config.seed
        )
    return {**run.record, "audit": audit}
