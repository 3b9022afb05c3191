"""Modes match docs/design.md §3; the sampler draws what the accountant assumes."""

import pytest
import torch

from fusiondp.experiment.loop import BatchSampler, epoch_boundaries
from fusiondp.mechanism.modes import HYBRID, MODES, NOISE, ORIGINAL


def test_mode_table_matches_the_design():
    # (sgd view, public view, private loss, regularizer, (w_pub, w_priv) at alpha=3, beta=0.25, relation)
    expected = {
        "sgd_ori": (ORIGINAL, None, None, False, (1.0, 0.0), None),
        "sgd_hybrid": (HYBRID, None, None, False, (1.0, 0.0), None),
        "sgd_pub": (NOISE, None, None, False, (1.0, 0.0), None),
        "dpsgd": (None, None, "full", False, (0.0, 1.0), "add/remove"),
        "naive_fusion": (None, HYBRID, "full", False, (0.75, 0.25), "replace-one"),
        "pretrain_dpsgd": (None, None, "full", False, (0.0, 1.0), "replace-one"),
        "naive_fusion_pub": (None, NOISE, "full", False, (0.75, 0.25), "replace-one"),
        "feature-dp": (None, NOISE, "difference", False, (1.0, 3.0), "zero-out"),
        "calibrated_fusion": (None, HYBRID, "difference", False, (1.0, 3.0), "zero-out"),
        "fusiondp": (None, HYBRID, "difference", True, (1.0, 3.0), "zero-out"),
    }
    assert list(MODES) == list(expected)
    for name, (sgd_view, public_view, private_loss, reg, weights, relation) in expected.items():
        m = MODES[name]
        got = (
            m.sgd_view,
            m.public_view,
            m.private_loss,
            m.uses_regularizer,
            m.weights(alpha=3.0, mix_weight=0.25),
            m.relation,
        )
        assert got == (sgd_view, public_view, private_loss, reg, weights, relation), name
        assert m.regularizer_weight(beta=0.25) == (0.25 if reg else 0.0)
        assert m.pretrains == (name == "pretrain_dpsgd")  # the one mode that always pretrains on hybrid rows


def test_poisson_sampling_rate_and_independence():
    sampler = BatchSampler(2000, seed=0)
    sizes = torch.tensor([len(sampler.poisson(0.05)) for _ in range(400)], dtype=torch.float64)
    assert sizes.mean().item() == pytest.approx(100, abs=2.5)  # E|B| = qN
    assert sizes.var().item() == pytest.approx(2000 * 0.05 * 0.95, rel=0.2)  # Binomial(N, q), not fixed
    counts = torch.zeros(2000)
    for _ in range(400):
        counts[sampler.poisson(0.05)] += 1
    assert counts.mean().item() == pytest.approx(20, abs=0.5) and counts.min() > 3


def test_public_batch_is_uniform_without_replacement_and_capped():
    sampler = BatchSampler(300, seed=1)
    rows = sampler.uniform(128)
    assert len(rows) == 128 and len(set(rows.tolist())) == 128
    assert sorted(sampler.uniform(4096).tolist()) == list(range(300))  # at most N, each row once


def test_shuffled_batches_cover_every_row_each_pass():
    sampler = BatchSampler(10, seed=2)
    seen = torch.cat([sampler.shuffled(5) for _ in range(2)])
    assert sorted(seen.tolist()) == list(range(10))
    assert all(len(sampler.shuffled(4)) == 4 for _ in range(7))


def test_epoch_boundaries_end_at_exactly_T():
    assert epoch_boundaries(steps=1452, epochs=13)[-1] == 1452
    assert len(epoch_boundaries(steps=1452, epochs=13)) == 13
    assert epoch_boundaries(steps=3, epochs=5) == [1, 2, 3]
