"""Per-group test metrics (fusiondp/experiment/groups.py): each group's numbers are the overall metrics on its
rows alone, groups come from the test rows' original values only, too-small groups carry no numbers."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import load_script, make_sepsis_frames, prepare_sepsis_views, sepsis_args, write_sepsis_dir

import fusiondp.tabular.runner
from fusiondp.datasets import DATASETS, adult, bank, dataset_module, sepsis
from fusiondp.experiment.groups import (
    MIN_GROUP_ROWS,
    UNKNOWN,
    assign_groups,
    band_labels,
    bands,
    categories,
    gap_summary,
    group_evaluation,
    group_fields,
    group_metrics,
    indicators,
)
from fusiondp.experiment.metrics import binary_metrics, evaluate_binary
from fusiondp.experiment.results import load_records

sepsis_script = load_script("train_fusiondp_sepsis")
adult_script = load_script("train_fusiondp_adult")

GROUP_FIELDS = ("test_groups", "test_group_auroc_gap", "test_worst_group", "test_worst_group_auroc")


def _scores(n=600, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    prob = np.clip(0.3 * y + rng.random(n) * 0.8, 0, 1)
    return y, prob


# --- group definitions ---------------------------------------------------------------------------


def test_age_bands_are_half_open_and_missing_is_unknown():
    assert band_labels((40, 60, 80)) == ("<40", "40-59", "60-79", "80+")
    frame = pd.DataFrame({"Age": [17.0, 39.99, 40.0, 59.9, 60.0, 79.99, 80.0, 100.0, np.nan]})
    groups = assign_groups(frame, [bands("Age", (40, 60, 80))])
    assert {k: v.tolist() for k, v in groups.items()} == {
        "Age=<40": [0, 1],
        "Age=40-59": [2, 3],
        "Age=60-79": [4, 5],
        "Age=80+": [6, 7],
        f"Age={UNKNOWN}": [8],
    }


def test_categories_and_indicators():
    frame = pd.DataFrame(
        {
            "Gender": [0.0, 1.0, 1.0, np.nan],
            "Age": [np.nan] * 4,
            "Unit1": [1.0, 0.0, np.nan, 0.0],
            "Unit2": [0.0, 1.0, np.nan, 0.0],
        }
    )
    groups = assign_groups(frame, sepsis.GROUPS)
    got = {k: v.tolist() for k, v in groups.items()}
    assert got == {
        "Gender=female": [0],
        "Gender=male": [1, 2],
        "Gender=unknown": [3],
        "Age=unknown": [0, 1, 2, 3],
        "Unit=MICU": [0],
        "Unit=SICU": [1],
        "Unit=unknown": [2],
        "Unit=none": [3],
    }


def test_string_categories_keep_their_values():
    frame = pd.DataFrame(
        {"race": ["White", "Black", None, "White"], "sex": ["Male", "Female", "Male", "Male"]}
    )
    groups = assign_groups(frame, [categories("sex"), categories("race")])
    assert list(groups) == ["sex=Female", "sex=Male", "race=Black", "race=White", "race=unknown"]
    assert groups["race=White"].tolist() == [0, 3] and groups["race=unknown"].tolist() == [2]
    assert groups["sex=Male"].tolist() == [0, 2, 3]


@pytest.mark.parametrize("name", [d for d in DATASETS if hasattr(dataset_module(d), "GROUPS")])
def test_every_declared_group_is_a_sensitive_column(name):
    module = dataset_module(name)
    assert module.GROUPS, name
    for spec in module.GROUPS:
        assert set(spec.columns) <= set(module.SENSITIVE), (name, spec.family)


def test_tabular_datasets_declare_groups():
    assert {s.family for s in sepsis.GROUPS} == {"Gender", "Age", "Unit"}
    assert {s.family for s in adult.GROUPS} >= {"sex", "race"}
    assert {s.family for s in bank.GROUPS} == {"age", "marital"}


def test_each_spec_sees_only_its_own_columns():
    seen = []
    spec = categories("Gender")
    spy = type(spec)(spec.family, spec.columns, lambda f: seen.append(list(f.columns)) or spec.assign(f))
    frame = make_sepsis_frames(n_eval=100)["test"]
    assign_groups(frame, [spy])
    assert seen == [["Gender"]]


def test_a_missing_group_column_is_a_clear_error():
    with pytest.raises(ValueError, match=r"'Age' needs column\(s\) \['Age'\]"):
        assign_groups(pd.DataFrame({"Gender": [0, 1]}), sepsis.GROUPS)


# --- metrics -------------------------------------------------------------------------------------


def test_each_group_metric_equals_the_metrics_of_that_subset_alone():
    y, prob = _scores()
    rng = np.random.default_rng(1)
    groups = {"g=a": np.flatnonzero(rng.random(len(y)) < 0.5)}
    groups["g=b"] = np.setdiff1d(np.arange(len(y)), groups["g=a"])
    got = group_metrics(y, prob, groups)
    for name, rows in groups.items():
        alone = binary_metrics(y[rows], prob[rows])
        assert got[name]["auroc"] == alone["auroc"] and got[name]["aupr"] == alone["aupr"]
        assert got[name]["n"] == len(rows)
        assert got[name]["positive_rate"] == y[rows].mean()
        assert got[name]["predicted_positive_rate"] == (prob[rows] >= 0.5).mean()


def test_too_small_groups_carry_no_numbers_and_stay_out_of_the_gap():
    y, prob = _scores(n=400)
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    groups = {
        "g=big": np.arange(200, 400),
        "g=few_rows": np.arange(MIN_GROUP_ROWS - 1),
        "g=few_positives": np.sort(np.concatenate([positives[:4], negatives[:100]])),
        "g=all_negative": negatives[:80],
    }
    got = group_metrics(y, prob, groups)
    for name in ("g=few_rows", "g=few_positives", "g=all_negative"):
        assert got[name]["too_small"] is True and set(got[name]) == {"n", "too_small", "reason"}, name
    assert got["g=few_rows"]["n"] == MIN_GROUP_ROWS - 1
    summary = gap_summary(got)
    assert summary["test_worst_group"] == "g=big"
    assert summary["test_group_auroc_gap"] is None  # one reported group: no gap
    assert summary["test_worst_group_auroc"] == got["g=big"]["auroc"]


def test_gap_is_largest_minus_smallest_overall_and_per_family():
    metrics = {
        "A=x": {"n": 100, "auroc": 0.9},
        "A=y": {"n": 100, "auroc": 0.7},
        "B=p": {"n": 100, "auroc": 0.8},
        "B=q": {"n": 100, "auroc": 0.6},
        "B=r": {"n": 10, "too_small": True},
    }
    summary = gap_summary(metrics)
    assert summary["test_group_auroc_gap"] == pytest.approx(0.3)
    assert summary["test_worst_group"] == "B=q" and summary["test_worst_group_auroc"] == 0.6
    assert summary["test_group_auroc_gap_A"] == pytest.approx(0.2)
    assert summary["test_group_auroc_gap_B"] == pytest.approx(0.2)
    assert summary["test_worst_group_A"] == "A=y" and summary["test_worst_group_B"] == "B=q"


def _sepsis_data(frames):
    return prepare_sepsis_views(frames)[0]


def test_final_group_evaluation_equals_evaluating_the_model_on_each_subset():
    frames = make_sepsis_frames(n_eval=600)
    data = _sepsis_data(frames)
    torch.manual_seed(0)
    model = sepsis.build_model(data.num_features)
    fields = group_evaluation(frames["test"], sepsis.GROUPS)(model, data)
    groups = assign_groups(frames["test"], sepsis.GROUPS)
    reported = [g for g, m in fields["test_groups"].items() if not m.get("too_small")]
    assert len(reported) >= 6
    for name in reported:
        rows = torch.as_tensor(groups[name])
        alone = evaluate_binary(model, data.x_test[rows], data.y_test[rows])  # a separate forward pass
        for metric in ("auroc", "aupr"):
            assert fields["test_groups"][name][metric] == pytest.approx(alone[metric], abs=1e-9), name
    for family in ("Gender", "Age", "Unit"):  # every test row is in exactly one group of each family
        sizes = [m["n"] for g, m in fields["test_groups"].items() if g.startswith(f"{family}=")]
        assert sum(sizes) == len(frames["test"]), family


# --- end to end: the records, and that nothing but the test rows defines a group --------------


def _scrambled_training_rows(frames, seed=7):
    """Training rows (original, hybrid, support) with every sensitive value shuffled and distorted."""
    rng = np.random.default_rng(seed)
    out = dict(frames)
    for split in ("original", "hybrid", "support"):
        frame = frames[split].copy()
        for col in sepsis.SENSITIVE:
            values = frame[col].to_numpy().copy()
            rng.shuffle(values)
            frame[col] = values * rng.uniform(0.5, 3.0) + rng.normal(size=len(values))
        out[split] = frame
    return out


def test_sepsis_record_has_group_fields(tmp_path):
    frames = make_sepsis_frames(n_eval=400)
    out = tmp_path / "r"
    record = sepsis_script.main(
        sepsis_args(write_sepsis_dir(tmp_path / "s", frames), "--mode", "dpsgd", "--results_json", str(out))
    )
    for field in GROUP_FIELDS:
        assert field in record, field
    assert set(record["group_definitions"]) == {"Gender", "Age", "Unit"}
    assert isinstance(record["test_group_auroc_gap"], float) and record["test_group_auroc_gap"] >= 0
    assert record["test_worst_group_auroc"] == min(
        m["auroc"] for m in record["test_groups"].values() if not m.get("too_small")
    )
    assert "test_group_auroc_gap_Age" in record and "test_worst_group_Unit" in record
    assert "test_groups" not in record["epochs_log"][-1]  # final evaluation only, not per epoch
    (stored,) = load_records(out)  # the stored record is valid JSON and keeps the groups
    assert stored["test_groups"] == json.loads(json.dumps(record["test_groups"]))
    # The overall test metrics and the groups come from the same final model.
    sizes = sum(m["n"] for g, m in record["test_groups"].items() if g.startswith("Gender="))
    assert sizes == len(frames["test"])


def test_groups_are_assigned_from_the_test_frame_alone(tmp_path, monkeypatch):
    seen = []
    real = fusiondp.tabular.runner.group_evaluation

    def spy(test, specs):
        seen.append(test.copy())
        return real(test, specs)

    monkeypatch.setattr(fusiondp.tabular.runner, "group_evaluation", spy)
    frames = make_sepsis_frames(n_eval=300)
    folder = write_sepsis_dir(tmp_path / "s", frames)
    sepsis_script.main(sepsis_args(folder, "--mode", "sgd_ori"))
    (test,) = seen
    pd.testing.assert_frame_equal(test.reset_index(drop=True), pd.read_csv(folder / sepsis.FILES["test"]))


def test_scrambling_training_sensitive_values_leaves_groups_unchanged(tmp_path):
    frames = make_sepsis_frames(n_eval=400)
    records = []
    for i, fr in enumerate([frames, _scrambled_training_rows(frames)]):
        folder = write_sepsis_dir(tmp_path / f"d{i}", fr)
        records.append(sepsis_script.main(sepsis_args(folder, "--mode", "sgd_hybrid")))
    a, b = records
    # sgd_hybrid never reads the originals; with the support set scrambled too the scale moves, so compare
    # the definitions (names and sizes) and the test rows' assignment, which read test rows only.
    assert {g: m["n"] for g, m in a["test_groups"].items()} == {
        g: m["n"] for g, m in b["test_groups"].items()
    }
    expected = assign_groups(frames["test"], sepsis.GROUPS)
    assert {g: len(r) for g, r in expected.items()} == {g: m["n"] for g, m in a["test_groups"].items()}
    # Negative control: the test rows' own values do define the groups.
    moved = frames["test"].assign(Age=frames["test"]["Age"].to_numpy()[::-1] + 15)
    assert {g: len(r) for g, r in assign_groups(moved, sepsis.GROUPS).items()} != {
        g: len(r) for g, r in expected.items()
    }


def test_scrambled_originals_leave_sgd_hybrid_groups_bit_for_bit(tmp_path):
    frames = make_sepsis_frames(n_eval=400)
    scrambled = dict(frames, original=_scrambled_training_rows(frames)["original"])
    records = [
        sepsis_script.main(sepsis_args(write_sepsis_dir(tmp_path / f"d{i}", fr), "--mode", "sgd_hybrid"))
        for i, fr in enumerate([frames, scrambled])
    ]
    for field in GROUP_FIELDS:
        assert records[0][field] == records[1][field], field


def _write_adult_outputs(folder, n=900, seed=0):
    """The files impute_adult.py writes, small: original values (strings) and a shuffled 'imputation'."""
    rng = np.random.default_rng(seed)

    def rows(k):
        frame = pd.DataFrame(
            {
                "age": rng.integers(17, 90, k),
                "workclass": rng.choice(["Private", "State-gov"], k),
                "fnlwgt": rng.integers(10_000, 500_000, k),
                "education": rng.choice(["Bachelors", "HS-grad"], k),
                "education-num": rng.integers(1, 16, k),
                "marital-status": rng.choice(["Never-married", "Divorced"], k),
                "occupation": rng.choice(["Adm-clerical", "Sales"], k),
                "relationship": rng.choice(["Husband", "Wife"], k),
                "race": rng.choice(["White", "Black", "Other"], k, p=[0.6, 0.37, 0.03]),
                "sex": rng.choice(["Male", "Female"], k),
                "capital-gain": rng.integers(0, 5000, k),
                "capital-loss": 0,
                "hours-per-week": rng.integers(10, 60, k),
                "native-country": rng.choice(["United-States", "Mexico"], k),
            }
        )
        frame["income"] = ((frame["education-num"] + rng.normal(0, 3, k)) > 9).astype(int)
        return frame

    folder.mkdir(parents=True)
    train = rows(n)
    imputed = train.copy()
    imputed[adult.SENSITIVE] = rows(n)[adult.SENSITIVE].to_numpy()
    splits = {
        "support": rows(100),
        "train": train,
        "train_imputed": imputed,
        "val": rows(300),
        "test": rows(600),
    }
    for split, frame in splits.items():
        frame.to_csv(folder / f"adult_{split}.csv", index=False)
    return splits["test"]


def test_adult_one_hot_record_groups_come_from_raw_test_values(tmp_path):
    test = _write_adult_outputs(tmp_path / "out")
    record = adult_script.main(
        adult_script.get_args_parser().parse_args(
            [
                "--data_dir",
                str(tmp_path / "out"),
                "--one_hot",
                "--epochs",
                "1",
                "--batch_size",
                "32",
                "--no_progress",
            ]
        )
    )
    groups = record["test_groups"]
    assert groups["sex=Male"]["n"] == (test["sex"] == "Male").sum()
    assert groups["race=Other"]["too_small"] is True  # about 18 rows of 600
    assert groups["age=<40"]["n"] == (test["age"] < 40).sum()
    assert record["test_worst_group"] != "race=Other"
    assert all(
        not (isinstance(v, float) and math.isnan(v)) for v in record["test_groups"]["sex=Male"].values()
    )


def test_group_fields_names_are_flat_scalars():
    y, prob = _scores()
    fields = group_fields(y, prob, {"A=x": np.arange(300), "A=y": np.arange(300, 600)})
    flat = {k: v for k, v in fields.items() if k != "test_groups"}
    assert all(v is None or isinstance(v, (int, float, str)) for v in flat.values())
    assert set(flat) == {
        "test_group_auroc_gap",
        "test_worst_group",
        "test_worst_group_auroc",
        "test_group_auroc_gap_A",
        "test_worst_group_A",
    }
    # indicators() treats both-NaN as unknown, several ones as 'several'
    frame = pd.DataFrame({"u1": [1, 1, np.nan], "u2": [0, 1, np.nan]})
    got = assign_groups(frame, [indicators({"u1": "a", "u2": "b"}, family="U")])
    assert {k: v.tolist() for k, v in got.items()} == {"U=a": [0], "U=unknown": [2], "U=several": [1]}


# --- scripts/make_tables.py ----------------------------------------------------------------------

make_tables = load_script("scripts.make_tables")


def _fake_records(path):
    rows = []
    for mode, eps, seed, worst_auroc, gap in [
        ("sgd_ori", 1.0, 1, 0.80, 0.05),
        ("dpsgd", 1.0, 1, 0.60, 0.20),
        ("dpsgd", 1.0, 2, 0.64, 0.10),
        ("fusiondp", 1.0, 1, 0.70, 0.10),
        ("fusiondp", 2.0, 1, 0.72, 0.08),
    ]:
        groups = {
            "Age=<40": {"n": 300, "auroc": worst_auroc + gap, "aupr": 0.5, "positive_rate": 0.1},
            "Age=80+": {"n": 100, "auroc": worst_auroc, "aupr": 0.4, "positive_rate": 0.2},
            "Unit=none": {"n": 3, "too_small": True, "reason": "fewer than 50 rows"},
        }
        rows.append(
            {
                "mode": mode,
                "epsilon": eps,
                "seed": seed,
                "test_auroc": 0.8,
                "test_groups": groups,
                "test_group_auroc_gap": gap,
                "test_worst_group": "Age=80+" if seed == 1 else "Age=<40",
                "test_worst_group_auroc": worst_auroc,
                "test_group_auroc_gap_Unit": None,
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _tables(*argv):
    return make_tables.main(make_tables.get_args_parser().parse_args([str(a) for a in argv]))


def test_make_tables_tabulates_the_flat_group_fields(tmp_path):
    results = _fake_records(tmp_path / "r.jsonl")
    table = _tables(
        results,
        "--metrics",
        "test_group_auroc_gap",
        "test_worst_group_auroc",
        "test_worst_group",
        "test_group_auroc_gap_Unit",
    )
    assert "| dpsgd | 1.0 | 0.1500 ± 0.0707 | 0.6200 ± 0.0283 | Age=80+ (1/2) | n/a | 2 |" in table
    assert "| sgd_ori | 1.0 | 0.0500 | 0.8000 | Age=80+ (1/1) | n/a | 1 |" in table


def test_make_tables_per_group_rows_group_and_filter(tmp_path):
    results = _fake_records(tmp_path / "r.jsonl")
    table = _tables(results, "--per_group", "--group", "mode", "group", "--metrics", "group_auroc", "group_n")
    assert "| dpsgd | Age=80+ | 0.6200 ± 0.0283 | 100 | 2 |" in table
    assert "| dpsgd | Unit=none | n/a | 3 | 2 |" in table  # too small: no numbers
    dpsgd = [line.split(" | ")[1] for line in table.splitlines() if line.startswith("| dpsgd")]
    assert dpsgd == ["Age=<40", "Age=80+", "Unit=none"]  # the records' order, not A-Z ('8' < '<')
    only = _tables(
        results, "--per_group", "--where", "group=Age=80+", "mode=fusiondp", "--group", "epsilon",
        "--metrics", "group_auroc",
    )  # fmt: skip
    assert only.splitlines()[2:] == ["| 1.0 | 0.7000 | 1 |", "| 2.0 | 0.7200 | 1 |"]
    family = _tables(results, "--per_group", "--group", "group_family", "--metrics", "group_too_small")
    assert "| Unit | 1.0000 ± 0.0000 | 5 |" in family


def test_make_tables_plots_group_fields_in_panels(tmp_path):
    results = _fake_records(tmp_path / "r.jsonl")
    flat, per_group = tmp_path / "flat.png", tmp_path / "groups.png"
    _tables(
        results,
        "--metrics",
        "test_auroc",
        "--plot",
        flat,
        "--y",
        "test_group_auroc_gap",
        "test_worst_group_auroc",
    )
    _tables(
        results, "--per_group", "--where", "group_too_small=False", "--metrics", "group_auroc",
        "--plot", per_group, "--y", "group_auroc",
    )  # fmt: skip
    import matplotlib.image

    height, width = matplotlib.image.imread(flat).shape[:2]
    assert width > 2 * height  # two panels side by side
    assert per_group.stat().st_size > 1000 and flat.stat().st_size > 1000
    with pytest.raises(SystemExit, match="not in the records"):
        _tables(results, "--metrics", "test_auroc", "--plot", flat, "--y", "test_nothing")
