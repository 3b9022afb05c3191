"""Fifth privacy review: public pretraining (``--pretrain_epochs``, ``pretrain_dpsgd``, d7aac07).

Each test here FAILS on d7aac07 and names the hole it demonstrates; the fix is in the test's docstring.
"""

from __future__ import annotations

import pytest
import torch
from conftest import load_script, sepsis_args, write_sepsis_dir
from test_invariance import _scrambled

import fusiondp.experiment.plan as plan
import fusiondp.experiment.run as run_module
from fusiondp.experiment.loop import BatchSampler
from fusiondp.experiment.plan import rng_seeds

script = load_script("train_fusiondp_sepsis")


def _run(data_dir, *flags):
    return script.main(sepsis_args(data_dir, "--epsilon", "2", *flags))


def test_secure_pretraining_log_identifies_the_secret_sampler_and_its_poisson_batches(
    tmp_path, sepsis_frames, monkeypatch
):
    """HOLE. Under ``--secure_rng`` public pretraining draws its shuffled batches from the SECRET sampler
    (run.py passes the DP phase's BatchSampler to ``pretrain``), and the record publishes the pretrained
    model's per-epoch val/test metrics (``public_pretraining.log``). That log is a deterministic function
    of public data, ``--seed`` and the secret sampler seed, so it is an offline oracle for the seed: an
    adversary who replays pretraining from PUBLIC data for each candidate seed finds the one whose log
    matches, then regenerates every Poisson batch of the DP phase: subsampling amplification (and with
    it the recorded ε) is gone. torch's CPU generator keeps only the low 32 bits of the 62-bit secret
    (test below), so the real search is 2^32 one-epoch pretrainings; here it is cut to 8 candidates.

    Fix: draw pretraining batches from their own generator seeded from ``--seed`` (pretraining is public
    and may be reproducible), never from the DP phase's secret sampler.
    """
    target_dir = write_sepsis_dir(tmp_path / "target", sepsis_frames)
    public_dir = write_sepsis_dir(tmp_path / "public", _scrambled(sepsis_frames))  # no original value known
    candidates = [1009, 2003, 3001, 4007, 5003, 6007, 7001, 8009]
    secret = (0x2BADC0DE << 32) | candidates[5]  # 62-bit OS-entropy seed (its high bits are ignored by torch)

    observed = []
    real_poisson = BatchSampler.poisson

    def spy(self, rate):
        rows = real_poisson(self, rate)
        observed.append(rows.tolist())
        return rows

    with monkeypatch.context() as m:
        draws = iter([secret, 0x1234567])  # (sampler seed, noise seed) as rng_seeds draws them
        m.setattr(plan.secrets, "randbits", lambda bits: next(draws))
        m.setattr(BatchSampler, "poisson", spy)
        target = _run(target_dir, "--mode", "fusiondp", "--secure_rng", "--pretrain_epochs", "1")
    assert target["rng"] == "secure" and target["privacy_guarantee_holds"] is True
    published = target["public_pretraining"]

    # The adversary: sgd_hybrid on public data (hybrid rows, labels, val/test) with a candidate sampler seed.
    matches = []
    for c in candidates:
        with monkeypatch.context() as m:
            m.setattr(run_module, "rng_seeds", lambda *, seed, secure_rng, c=c: (c, c + 1, "seeded"))
            replay = _run(
                public_dir, "--mode", "sgd_hybrid", "--epochs", str(published["epochs"]),
                "--lr", str(published["lr"]),
            )  # fmt: skip
        if replay["epochs_log"] == published["log"]:
            matches.append(c)

    predicted = None
    if len(matches) == 1:
        sampler = BatchSampler(target["num_train_rows"], seed=matches[0])
        for _ in range(published["steps"]):
            sampler.shuffled(published["batch_size"])
        predicted = []
        for _ in range(target["steps"]):
            sampler.uniform(int(target["args"]["public_batch_size"]))
            predicted.append(sampler.poisson(target["sample_rate"]).tolist())
    assert predicted != observed, (
        f"the published public_pretraining log identified the secret sampler seed (mod 2^32: {matches}) "
        f"and, from public data alone, every one of the DP phase's {len(observed)} Poisson batches"
    )


def test_secure_seeds_keep_their_entropy_in_torchs_cpu_generator():
    """HOLE (pre-existing, made exploitable by the pretraining oracle above). ``rng_seeds`` draws 62 bits
    from OS entropy, but ``torch.Generator().manual_seed`` (CPU MT19937) initialises from the low 32
    bits only: the Poisson sampler (always a CPU generator), the CPU noise generator and the DP
    statistics' generator have 2^32 possible streams, not 2^62 as docs/privacy.md §1c implies.

    Fix: fill the MT19937 state from OS entropy (``Generator.set_state`` with ``secrets.token_bytes``
    for the 624 words), or draw masks and noise from a generator keyed with >= 128 bits.
    """
    sampler_seed, noise_seed, rng = rng_seeds(seed=0, secure_rng=True)
    assert rng == "secure"
    a = BatchSampler(10_000, seed=sampler_seed).poisson(0.05)
    b = BatchSampler(10_000, seed=sampler_seed % 2**32).poisson(0.05)
    assert not torch.equal(a, b), "the secret sampler stream is fixed by the low 32 bits of its seed"
    n1 = torch.randn(1000, generator=torch.Generator().manual_seed(noise_seed))
    n2 = torch.randn(1000, generator=torch.Generator().manual_seed(noise_seed % 2**32))
    assert not torch.equal(n1, n2), "the secret CPU noise is fixed by the low 32 bits of its seed"


def test_seconds_per_epoch_counts_the_dp_phase_only(tmp_path, sepsis_frames, monkeypatch):
    """BUG. ``train_seconds += pretrain_seconds`` before ``seconds_per_epoch = train_seconds / len(log)``:
    the DP phase's per-epoch time (what scripts/bench_step.py reads) includes the whole pretraining.

    Fix: record the pretraining's seconds in ``public_pretraining`` and keep ``train_seconds`` (or at
    least ``seconds_per_epoch``) to the DP phase.
    """
    real = run_module.public_pretraining

    def slow(*args, **kwargs):
        log, _ = real(*args, **kwargs)
        return log, 1000.0  # a pretraining that took 1000 s

    monkeypatch.setattr(run_module, "public_pretraining", slow)
    record = _run(
        write_sepsis_dir(tmp_path / "d", sepsis_frames), "--mode", "pretrain_dpsgd", "--pretrain_epochs", "1"
    )
    assert record["seconds_per_epoch"] < 100, (
        f"one DP epoch of a 240-row quick run reported as {record['seconds_per_epoch']:.0f} s"
    )
