"""Sixth privacy review: e52cdb8 and b81314d (``--private_scope sensitive_inputs``, ``os_entropy_generator``,
random trial tags in secure honest studies, pretraining's own sampler).

Each test here FAILS on b81314d and names the hole it demonstrates; the fix is in its docstring.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import load_script
from test_redteam4 import EPSILON, fake_honest_launcher

from fusiondp.mechanism.tuning import TrialCount


def _secure_honest_args(tune, tmp_path: Path, *study_flags: str, modes=("dpsgd",)):
    return tune.parse_args(
        ["--dataset", "sepsis", "--modes", *modes, "--epsilon", f"{EPSILON:g}", "--protocol", "honest",
         "--mean_trials", "4", "--seeds", "1", "--results", str(tmp_path / "study"), *study_flags,
         "--", "--accountant", "rdp", "--secure_rng"]
    )  # fmt: skip


def _fake_launch(launched: list):
    """A launcher that writes the record each honest trial writes (no training)."""
    return fake_honest_launcher(launched)[0]


def _modes_of(launched) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in launched:
        mode = dict(zip(run.flags[::2], run.flags[1::2], strict=False))["--mode"]
        counts[mode] = counts.get(mode, 0) + 1
    return counts


# --------------------------------------------------------------------------- holes (these fail now)


def test_a_secure_honest_summary_does_not_time_the_secret_number_of_trials(monkeypatch, tmp_path):
    """HOLE. summary.json (published) carries ``_study.minutes_this_start``, the wall time of the study,
    and its ``command`` (with ``--jobs``). The honest spaces fix q and T, so every trial takes about the
    same time (the winner's published record gives it: ``train_seconds``), and minutes × jobs / (minutes
    per trial) is K: the very number fix B of the fourth review took out of the summary. Here each trial
    "takes" one minute: the published figure is exactly K.

    Fix: leave the study's wall time out of a hidden (secure honest) summary (print it to the operator,
    or keep it in the private journal).
    """
    tune = load_script("scripts.tune")
    monkeypatch.setattr(TrialCount, "draw", lambda self, rng: 6)  # the secret K of this study
    clock = [1_000_000.0]
    monkeypatch.setattr(tune.time, "time", lambda: clock[0])
    launched: list = []
    inner = _fake_launch(launched)

    def timed(args, runs):
        clock[0] += 60.0 * len(runs)  # one minute per trial, one job
        return inner(args, runs)

    monkeypatch.setattr(tune, "launch", timed)
    summary = tune.main(_secure_honest_args(tune, tmp_path))
    k = len(launched)
    published = json.dumps(summary)
    assert "minutes_this_start" not in summary["_study"], (
        f"secret K = {k}; the published summary says the study took "
        f"{summary['_study'].get('minutes_this_start')} minutes at one minute per trial: {published[:200]}"
    )


def test_each_modes_honest_study_draws_its_own_secret_number_of_trials(monkeypatch, tmp_path):
    """HOLE. One K serves every mode of a study (``k = drawn_trials(args) or number_of_trials(args)``,
    and a journal whose modes hold different K is refused), while the table says "each mode's study is its
    own release on the same rows: releasing several modes' winners composes their totals". Papernot &
    Steinke's bound holds for one best-of-K release with K unobserved; composing two releases adds their
    RDP only if their randomness is independent. With one shared K, each released winner's score is
    evidence about K (the max of more draws is larger), so the second release is a best-of-K whose K is
    no longer distributed as the bound assumes; with many modes K is effectively observed.

    Fix: draw K independently per mode (store it in the mode's study user attrs, as now), and check it
    per study on resumption instead of requiring one K across the journal.
    """
    tune = load_script("scripts.tune")
    draws = iter([2, 5, 7, 9])
    monkeypatch.setattr(TrialCount, "draw", lambda self, rng: next(draws))
    launched: list = []
    monkeypatch.setattr(tune, "launch", _fake_launch(launched))
    tune.main(_secure_honest_args(tune, tmp_path, modes=("dpsgd", "fusiondp")))
    counts = _modes_of(launched)
    assert counts["dpsgd"] != counts["fusiondp"], (
        f"both modes' studies ran the same secret K: {counts} (the independent draws offered were 2 and 5)"
    )


def test_a_poisson_study_that_draws_no_trial_releases_nothing_and_stays_resumable(monkeypatch, tmp_path):
    """HOLE. ``TrialCount.draw`` says "for Poisson, K = 0 is possible: the study then releases nothing".
    tune.main then reaches ``max(done, ...)`` over no trial and dies (ValueError), writing no summary; the
    next start reads K = 0 from the journal, ``drawn_trials(args) or number_of_trials(args)`` treats 0 as
    "no study yet", draws a fresh K and exits with "drawn with K=0, not k": the study can never finish,
    and an operator who starts it again in a new folder has redrawn K until K ≥ 1, a distribution the
    Poisson bound does not describe. Both failures also show the operator that the secret K is 0.

    Fix: ``drawn_trials(...) is None`` (not falsiness), and a mode with K = 0 gets a summary row that
    releases nothing (same shape as any other hidden row, so K = 0 is not singled out).
    """
    tune = load_script("scripts.tune")
    monkeypatch.setattr(TrialCount, "draw", lambda self, rng: 0)
    launched: list = []
    monkeypatch.setattr(tune, "launch", _fake_launch(launched))
    args = lambda: _secure_honest_args(tune, tmp_path, "--trials_distribution", "poisson")  # noqa: E731
    for start in (1, 2):  # the second start resumes the first
        try:
            tune.main(args())
        except (ValueError, SystemExit) as err:
            pytest.fail(f"start {start} of a K = 0 study failed: {type(err).__name__}: {err}")
    assert launched == []


def test_an_interrupted_candidate_draw_does_not_add_trials_on_restart(monkeypatch, tmp_path):
    """HOLE (pre-existing, resumption). ``open_study`` asks K trials one by one and only then sets
    ``candidates_drawn``. A start stopped in between (Ctrl-C, a SLURM kill, a full disk while the journal
    is written) leaves a few RUNNING trials; the next start sees no ``candidates_drawn``, asks K more, and
    would run and select among all of them, a best-of-(K + c) released under the best-of-K total; a trial
    asked but not yet suggested has no parameters, so in fact every restart dies in ``trial_flags``
    (KeyError) and the study is wedged. (A trial asked but not yet tagged also falls back to
    ``trial<number>``, the index the random tags hide.)

    Fix: on a study without ``candidates_drawn``, ask only ``K - len(existing trials)`` more (tagging any
    untagged one), or draw the candidates into a fresh study name and write ``candidates_drawn`` last.
    """
    tune = load_script("scripts.tune")
    monkeypatch.setattr(TrialCount, "draw", lambda self, rng: 4)
    real_suggest, calls = tune.suggest, [0]

    def stopped_after_two(trial, space):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt("the operator stops the first start")
        return real_suggest(trial, space)

    monkeypatch.setattr(tune, "suggest", stopped_after_two)
    launched: list = []
    monkeypatch.setattr(tune, "launch", _fake_launch(launched))
    with pytest.raises(KeyboardInterrupt):
        tune.main(_secure_honest_args(tune, tmp_path))
    try:
        tune.main(_secure_honest_args(tune, tmp_path))  # the restart
    except KeyError as err:  # the asked-but-unsuggested trial has no parameters: every restart dies here
        pytest.fail(f"the restart cannot run the study: KeyError {err} (trial asked, never suggested)")
    assert len(launched) == 4, f"K = 4, but the restarted study ran and selected among {len(launched)} trials"


def test_the_private_terms_dropout_stream_is_not_a_32_bit_seed(monkeypatch):
    """HOLE (low severity). ``_own_random_stream`` seeds the global CPU generator with one 62-bit draw of
    the secret noise generator through ``manual_seed``, which keeps the low 32 bits (the hole the fifth
    review fixed for the sampler and the noise): in a secure CPU run the private term's dropout (text
    encoder head, ViewSharedDropout) has 2^32 possible streams per step, against §1c ("the private term's
    dropout ... drawn from OS entropy"), and each step's seed is 32 bits of the secret noise stream's
    output handed to a non-secret-grade stream.

    Fix: fill the forked global generator's whole state (e.g. ``set_state`` of an
    ``os_entropy_generator()``'s state, or 624 words drawn from ``generator``), as ``os_entropy_generator``
    does for the sampler and the noise. Done for secure runs (``StepConfig.secure_streams``, 624 words
    drawn from the secret noise generator); seeded runs keep their one-draw seed and their numbers.
    """
    from fusiondp.mechanism.randomness import os_entropy_generator
    from fusiondp.mechanism.step import _own_random_stream

    g = os_entropy_generator()
    probe = torch.Generator()
    probe.set_state(g.get_state())
    seed = int(torch.randint(0, 2**62, (1,), generator=probe))
    with _own_random_stream(g, torch.device("cpu"), full_state=True):  # what a --secure_rng run uses
        inside = torch.rand(64)
    assert not torch.equal(inside, torch.rand(64, generator=torch.Generator().manual_seed(seed % 2**32))), (
        "the private term's dropout stream is the stream of a 32-bit seed"
    )
