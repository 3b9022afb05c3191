"""A third privacy review (issue items 2-5): each test fails without its fix (docs/privacy.md §5)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import load_script, make_sepsis_frames, sepsis_args, write_sepsis_dir

from fusiondp.datasets import sepsis

impute_sepsis = load_script("impute_sepsis")
sepsis_script = load_script("train_fusiondp_sepsis")

pytestmark = pytest.mark.usefixtures("calibrate_once")  # σ calibrated once per setting (conftest)


# ---------------------------------------------------------------- item 2: one support set per folder


@pytest.fixture(scope="module")
def imputed(tmp_path_factory):
    """impute_sepsis.py --released_dir output (hgb) of a 400-row release: 100 support, 300 training rows."""
    root = tmp_path_factory.mktemp("review3_sepsis")
    frames = make_sepsis_frames(n_train=400, n_eval=60, seed=3)
    frames["support"] = None  # the authors' release ships none
    release = write_sepsis_dir(root / "release", frames)
    out = root / "out"
    args = impute_sepsis.get_args_parser().parse_args(
        ["--released_dir", str(release), "--out_dir", str(out), "--imputer", "hgb", "--support_rows", "100",
         "--n_bins", "4", "--seed", "5", "--no_progress"]
    )  # fmt: skip
    impute_sepsis.main(args)
    return out


def _copy(folder, dest):
    dest.mkdir(parents=True)
    for path in folder.iterdir():
        if path.is_file():
            (dest / path.name).write_bytes(path.read_bytes())
    return dest


def test_reference_folder_keeps_the_support_set_and_the_training_rows(imputed):
    """The reference folder trains on the 300 rows ours trains on, with the same support set; before the
    fix it had no support.csv and training drew another support set out of its training rows."""
    ref = imputed / "reference_tabpfn"
    assert (ref / "support.csv").read_bytes() == (imputed / "support.csv").read_bytes()
    assert (ref / "train_ori.csv").read_bytes() == (imputed / "train_ori.csv").read_bytes()
    info = json.loads((ref / "imputation_info.json").read_text())
    assert info["imputer"] == sepsis.RELEASE_IMPUTER and info["splits"]["support"] == 100
    records = {
        name: sepsis_script.main(sepsis_args(folder, "--mode", "sgd_hybrid"))
        for name, folder in {"ours": imputed, "reference": ref}.items()
    }
    for record in records.values():
        assert record["num_train_rows"] == 300 and record["support_set"].endswith("support.csv")
        assert record["args"]["support_rows"] == sepsis.SUPPORT_ROWS  # the settings as before the fix
    assert records["reference"]["imputer"].startswith("TabPFN, as released by the authors")


def test_no_second_support_set_is_drawn_from_a_derived_folder(imputed, tmp_path):
    folder = _copy(imputed, tmp_path / "derived")
    (folder / "support.csv").unlink()
    with pytest.raises(
        ValueError, match=r"imputation_info\.json\) but has no support\.csv.*--support_rows N"
    ):
        sepsis_script.main(sepsis_args(folder, "--mode", "sgd_hybrid"))
    # Given explicitly, the draw is the user's decision (and the record says so).
    record = sepsis_script.main(sepsis_args(folder, "--mode", "sgd_hybrid", "--support_rows", "30"))
    assert record["num_train_rows"] == 270 and record["support_set"].startswith("30 rows of train_ori.csv")
    # The authors' release (no imputation_info.json) still gets the default draw.
    release = write_sepsis_dir(
        tmp_path / "release", make_sepsis_frames(n_train=1200, n_eval=60) | {"support": None}
    )
    frames, where = sepsis.training_frames(
        sepsis.load_frames(release), release, support_rows=None, support_seed=sepsis.SUPPORT_SEED
    )
    assert (
        len(frames["support"]) == sepsis.SUPPORT_ROWS and len(frames["train"]) == 1200 - sepsis.SUPPORT_ROWS
    )
    assert where.startswith(f"{sepsis.SUPPORT_ROWS} rows of train_ori.csv")


def test_a_support_file_that_shares_rows_with_training_is_refused(imputed, tmp_path):
    folder = _copy(imputed, tmp_path / "overlap")
    support = pd.read_csv(folder / "support.csv")
    train = pd.read_csv(folder / "train_ori.csv")
    pd.concat([support, train.iloc[[4, 17]]]).to_csv(folder / "support.csv", index=False)
    with pytest.raises(
        ValueError,
        match=r"support\.csv shares 2 of its 102 row\(s\) with the training rows of .*train_ori\.csv",
    ):
        sepsis_script.main(sepsis_args(folder, "--mode", "sgd_hybrid"))
    # NaNs compare equal (a row with unmeasured labs is still the same row); the disjoint file passes.
    assert train.iloc[[4, 17]].isna().any(axis=None)
    support.to_csv(folder / "support.csv", index=False)
    assert np.isfinite(sepsis_script.main(sepsis_args(folder, "--mode", "sgd_hybrid"))["test_aupr"])


# ------------------------------------- item 3: what the zero-out neighbour of a binary column is


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("fusiondp", "each row's imputation carried onto the original view's scale"),
        ("calibrated_fusion", "each row's imputation carried onto the original view's scale"),
        ("feature-dp", "the noise view puts N(0,1) values into the binary columns"),
        ("dpsgd", None),
    ],
)
def test_split_mode_records_say_what_the_binary_zero_out_neighbour_is(
    sepsis_dir, sepsis_frames, mode, expected
):
    """Gender, Unit1 and Unit2 are standardised per view, so their zero-out value is not a real 0/1
    value; the record of a split mode says so, with the values, and points to replace-one."""
    from fusiondp.mechanism.scaling import column_statistics
    from fusiondp.tabular.data import zero_out_values

    record = sepsis_script.main(sepsis_args(sepsis_dir, "--mode", mode))
    notes = [n for n in record["privacy_notes"] if "binary columns" in n]
    if expected is None:  # replace-one under both relations: no zero-out value to explain
        assert notes == []
        return
    [note] = notes
    assert "['Gender', 'Unit1', 'Unit2']" in note and expected in note
    assert "replace-one epsilon is the meaningful number" in note or "only the replace-one epsilon" in note
    if mode == "feature-dp":
        return
    # The values stated are the neighbour's (fusiondp.tabular.data.zero_out_values with this run's statistics).
    hybrid = sepsis_frames["hybrid"]
    support_stats = column_statistics(sepsis_frames["support"], sepsis.BINARY)
    neighbour = zero_out_values(hybrid, columns=sepsis.BINARY, original_stats=support_stats)
    for col in sepsis.BINARY:
        zero, one = (neighbour[col][hybrid[col] == x].iloc[0] for x in (0.0, 1.0))
        assert f"{col} imputed 0 -> {zero:.3f}, 1 -> {one:.3f}" in note
        assert not {round(zero, 3), round(one, 3)} <= {0.0, 1.0}  # not a real value


def test_the_note_shows_no_value_computed_from_private_statistics(sepsis_dir):
    record = sepsis_script.main(sepsis_args(sepsis_dir, "--mode", "fusiondp", "--scaling", "private"))
    [note] = [n for n in record["privacy_notes"] if "binary columns" in n]
    assert "not a real 0/1 value" in note and "this run:" not in note


# ------------------------------------------- item 4: an original note's embedding is its own alone


def test_an_original_note_embeds_the_same_alone_and_in_any_batch(tmp_path, monkeypatch):
    """With --encoder_batch_size > 1 a padded batch moved a MiniLM embedding by ~7e-8 with the other
    notes' lengths: one original note moved another's private term, and the cache depended on batching."""
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from fusiondp.text.encoder import EmbeddingCache, FrozenEncoder, resolve_encoder

    spec = resolve_encoder(None, max_tokens=64)  # the MiniLM wheel, offline (a tiny BERT shows no drift)
    encoder = FrozenEncoder(spec, batch_size=8)
    note = "A 54 year old woman presented with chest pain."
    others = [
        "short.",
        "The patient, a man of 70 years, was admitted after a fall and had surgery on the hip. " * 2,
        "x y z w",
    ]
    alone = EmbeddingCache(tmp_path / "alone", spec, "original").embeddings(
        [note], lambda: encoder, progress=False
    )
    for i, partners in enumerate([others[:1], others[1:2], others, others[::-1]]):
        cache = EmbeddingCache(tmp_path / f"batch{i}", spec, "original")
        batch = cache.embeddings([*partners, note], lambda: encoder, progress=False)
        assert torch.equal(batch[-1], alone[0]), partners
    # Public views still batch (the flag's purpose): equal to round-off only.
    hybrid = EmbeddingCache(tmp_path / "hybrid", spec, "hybrid").embeddings(
        [*others, note], lambda: encoder, progress=False
    )
    assert float((hybrid[-1] - alone[0]).abs().max()) < 1e-6


# ------------------------------------------- item 5: no CAML timing in a record that claims the guarantee


def _notes_args(data_dir, *extra):
    mimic_script = load_script("train_fusiondp_mimic")
    return mimic_script.get_args_parser().parse_args(
        ["--dataset", "medical_abstracts", "--data_dir", str(data_dir), "--epochs", "0.2", "--batch_size", "4",
         "--public_batch_size", "8", "--embedding_dim", "8", "--filters", "4", "--max_len", "20",
         "--no_progress", *extra]
    )  # fmt: skip


@pytest.mark.parametrize(
    "mode,timed", [("fusiondp", False), ("calibrated_fusion", False), ("sgd_hybrid", True)]
)
def test_caml_timings_stay_out_of_dp_records(tmp_path, mode, timed):
    """A CAML batch is padded to its longest note, original notes included: the training time of a DP
    mode depends on original note lengths, so such a record carries no timing."""
    from test_text_data import make_note_frames, write_notes_dir

    folder = write_notes_dir(tmp_path / "notes", make_note_frames())
    record = load_script("train_fusiondp_mimic").main(_notes_args(folder, "--mode", mode, "--secure_rng"))
    if timed:  # reads hybrid notes only: their lengths are public
        assert record["train_seconds"] > 0 and record["seconds_per_epoch"] > 0
        return
    assert record["train_seconds"] is None and record["seconds_per_epoch"] is None
    assert record["privacy_guarantee_holds"] is True  # --secure_rng: the guarantee holds, and no timing
    assert any(n.startswith("train_seconds and seconds_per_epoch left out") for n in record["privacy_notes"])
