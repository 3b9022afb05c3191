"""The audit: the one-run lower bound on known numbers, and the audit's verdict on the correct
implementation and on the named broken variants of fusiondp/audit/controls.py (tiny synthetic
sepsis-shaped data)."""

import importlib
import math
from pathlib import Path

import pytest
from conftest import make_sepsis_frames, sepsis

from fusiondp.audit import (
    C_H_FROM_PRIVATE,
    CORRECT,
    NO_CLIPPING,
    NO_NOISE,
    SCALER_FROM_PRIVATE,
    TabularTask,
    audit_once,
    audit_p_value,
    canary_audit,
    epsilon_lower_bound,
    plan_canaries,
    plant_canaries,
    step_canary_audit,
)
from fusiondp.datasets import training_parser
from fusiondp.datasets.sepsis import build_model as sepsis_mlp
from fusiondp.experiment.config import RunConfig
from fusiondp.mechanism.accounting import epsilon_spent


def test_p_value_is_the_binomial_tail_without_delta():
    # eps = 0: every guess is a fair coin; P[10 of 10 correct] = 2^-10.
    assert audit_p_value(m=100, r=10, v=10, epsilon=0.0, delta=0.0) == pytest.approx(2**-10)
    assert audit_p_value(m=100, r=10, v=0, epsilon=1.0, delta=1e-5) == 1.0
    # delta only ever raises the bound
    assert audit_p_value(m=1000, r=100, v=80, epsilon=1.0, delta=1e-3) > audit_p_value(
        m=1000, r=100, v=80, epsilon=1.0, delta=0.0
    )


def test_all_correct_guesses_give_the_closed_form_bound():
    # delta = 0, v = r: bound = p^r with p = e^eps / (1 + e^eps); rejected while p^r < 0.05.
    r = 100
    expected = math.log(0.05 ** (1 / r) / (1 - 0.05 ** (1 / r)))
    assert epsilon_lower_bound(m=1000, r=r, v=r, delta=0.0, confidence=0.95) == pytest.approx(
        expected, abs=1e-3
    )
    assert expected == pytest.approx(3.49, abs=0.01)
    # a small delta lowers it a little, never raises it
    assert epsilon_lower_bound(m=1000, r=r, v=r, delta=1e-5) <= expected


def test_random_guessing_gives_about_zero():
    assert epsilon_lower_bound(m=1000, r=100, v=50, delta=1e-5) == 0.0
    assert epsilon_lower_bound(m=1000, r=100, v=58, delta=1e-5) < 0.1
    # more correct guesses, larger bound; more confidence, smaller bound
    assert epsilon_lower_bound(m=1000, r=100, v=80, delta=1e-5) > epsilon_lower_bound(
        m=1000, r=100, v=70, delta=1e-5
    )
    assert epsilon_lower_bound(m=1000, r=100, v=80, delta=1e-5, confidence=0.99) < epsilon_lower_bound(
        m=1000, r=100, v=80, delta=1e-5, confidence=0.9
    )


@pytest.fixture(scope="module")
def task():
    frames = make_sepsis_frames(n_train=240, n_eval=80, seed=3)
    return TabularTask(
        dataset="sepsis",
        frames=frames,
        public=sepsis.PUBLIC,
        sensitive=sepsis.SENSITIVE,
        label=sepsis.LABEL,
        build_model=sepsis_mlp,
    )


def _audit_script(name, monkeypatch):
    """A scripts/ audit script as a module, as ``python scripts/<name>.py`` sees it (scripts/ first on
    the path, for its ``audit_common`` helper)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "scripts"))
    return importlib.import_module(name)


def _args(*extra):
    return RunConfig.from_args(
        training_parser(sepsis).parse_args(
            [
                "--epochs",
                "1",
                "--batch_size",
                "16",
                "--public_batch_size",
                "64",
                "--no_progress",
                "--epsilon",
                "1",
                "--seed",
                "5",
                *extra,
            ]
        )
    )


def test_out_canaries_are_exact_zero_out_neighbours(task):
    plan = plan_canaries(task, m=40, seed=0)
    planted = plant_canaries(task, plan)
    out_rows = plan.rows[~plan.is_in]
    in_rows = plan.rows[plan.is_in]
    hybrid = task.frames["hybrid"]
    for col in sepsis.SENSITIVE:
        assert (planted[col].iloc[out_rows].to_numpy() == hybrid[col].iloc[out_rows].to_numpy()).all()
        assert (planted[col].iloc[in_rows].to_numpy() == plan.extreme[col].to_numpy()[plan.is_in]).all()
    untouched = sorted(set(range(len(planted))) - set(plan.rows))
    assert planted.iloc[untouched].equals(task.frames["original"].iloc[untouched])
    assert 10 < plan.is_in.sum() < 30  # fair coins


def test_correct_implementation_passes(task):
    rec = audit_once(task, _args("--mode", "fusiondp"), canaries=60, guesses=10, attack_rows=100)
    audit = rec["audit"]
    assert audit["claimed_epsilon"] == rec["epsilon_zero_out"] <= 1.0
    assert audit["epsilon_lower"] <= audit["claimed_epsilon"]
    assert audit["public_state_differs"] == [] and audit["epsilon_lower_deterministic"] == 0.0
    assert audit["step_audit"]["epsilon_lower"] <= audit["claimed_epsilon"]
    attack = audit["attribute_inference"]
    assert set(attack["columns"]) == set(sepsis.SENSITIVE)
    # The imputer is not scored on training rows (a function of their sensitive values, and audit
    # records are quoted); what public columns reveal is measured on held-out rows.
    for scores in attack["columns"].values():
        assert not [k for k in scores if k.startswith("imputer")] and "public_attack_test" in scores
        # Nor any attack score against training rows' values: only the differences (second review).
        assert not [k for k in scores if k.endswith("_attack_train")] and "advantage_train" in scores
    assert math.isfinite(attack["mean_advantage_train"]) and math.isfinite(attack["mean_member_gap"])


@pytest.mark.parametrize(
    # A scaler fitted on the planted originals now moves only the original view's scale: the hybrid
    # view keeps its own rows' statistics, so C_h (from hybrid rows) no longer differs.
    "control,differs",
    [(C_H_FROM_PRIVATE, ["c_h"]), (SCALER_FROM_PRIVATE, ["preprocessor"])],
    ids=lambda c: getattr(c, "name", None),
)
def test_leaks_outside_the_mechanism_are_flagged(task, control, differs):
    rec = audit_once(
        task, _args("--mode", "fusiondp"), canaries=60, guesses=10, control=control, attack=False
    )
    audit = rec["audit"]
    assert audit["public_state_differs"] == differs
    assert audit["epsilon_lower_deterministic"] == math.inf > audit["claimed_epsilon"]


def test_modes_that_never_read_private_values_pass(task):
    rec = audit_once(task, _args("--mode", "sgd_hybrid"), canaries=60, guesses=10, attack=False)
    assert rec["audit"]["claimed_epsilon"] == 0.0 and rec["audit"]["epsilon_lower"] == 0.0


def test_audit_script_writes_records_and_table_and_reuses_them(sepsis_dir, tmp_path, monkeypatch):
    audit_sepsis = _audit_script("audit_sepsis", monkeypatch)

    out, table = tmp_path / "audit.jsonl", tmp_path / "audit.md"
    argv = ["--data_dir", str(sepsis_dir), "--epochs", "1", "--batch_size", "32", "--public_batch_size", "64",
            "--modes", "sgd_hybrid", "fusiondp", "--epsilons", "2", "--seeds", "1", "--canaries", "40",
            "--guesses", "8", "--attack_rows", "60", "--results_json", str(out), "--table", str(table),
            "--no_progress"]  # fmt: skip
    first = audit_sepsis.main(audit_sepsis.get_args_parser().parse_args(argv))
    assert len(out.read_text().splitlines()) == 2
    assert (
        "| fusiondp | 2.0 |" in table.read_text() and "| sgd_hybrid | – | 0.00 | 0.00 |" in table.read_text()
    )
    again = audit_sepsis.main(audit_sepsis.get_args_parser().parse_args(argv))
    assert len(out.read_text().splitlines()) == 2  # reused, not re-run
    assert again["table"] == first["table"]


@pytest.mark.parametrize("variant", [CORRECT, NO_NOISE, NO_CLIPPING], ids=lambda v: v.name)
def test_step_canaries_pass_the_step_and_flag_missing_noise_or_clipping(variant):
    # q = 0.01, T = 400, sigma = 1: a claimed eps of about 1.1 (RDP) under zero-out.
    setting = {"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 400}
    claimed = epsilon_spent(**setting, delta=1e-5)
    audit = step_canary_audit(
        **setting,
        max_grad_norm=1.0,
        claimed_epsilon=claimed,
        delta=1e-5,
        canaries=2000,
        guesses=400,
        variant=variant,
    )
    if variant is CORRECT:
        assert audit["epsilon_lower"] <= claimed
    else:  # (nearly) every guess right: the bound (about 4.9 at 400/400) is far above the claim
        assert audit["correct"] >= 390 and audit["epsilon_lower"] > 2 * claimed


def test_step_audit_script_prints_every_variant(tmp_path, monkeypatch):
    audit_step = _audit_script("audit_step", monkeypatch)

    argv = ["--label", "toy", "--num_rows", "1000", "--batch_size", "10", "--epochs", "2", "--epsilons", "2",
            "--seeds", "1", "--canaries", "400", "--guesses", "80"]  # fmt: skip
    out = audit_step.main(audit_step.get_args_parser().parse_args(argv))
    by_variant = {row["variant"]: row["results"][0] for row in out["rows"]}
    assert set(by_variant) == {"correct", "no_noise", "no_clipping"}
    assert by_variant["correct"]["epsilon_lower"] <= by_variant["correct"]["claimed_epsilon"]
    assert by_variant["no_noise"]["correct"] == 80
    assert out["table"].count("| toy | 2 |") == 3


def test_the_bound_takes_scores_and_coins_only():
    import numpy as np

    is_in = np.array([True, False] * 50)
    perfect = canary_audit(is_in.astype(float), is_in, k=20, delta=0.0)
    assert perfect["correct"] == 20 and perfect["epsilon_lower"] > 0
    blind = canary_audit(np.zeros(100), is_in, k=20, delta=0.0)
    assert blind["correct"] == 10 and blind["epsilon_lower"] == 0.0
    with pytest.raises(ValueError, match="got 0"):
        canary_audit(np.zeros(100), is_in, k=0, delta=0.0)


def test_package_code_patches_nothing():
    root = Path(__file__).resolve().parent.parent / "fusiondp"
    offenders = [p.name for p in root.rglob("*.py") if "unittest" in p.read_text()]
    assert offenders == []
