"""The paired comparison of two runs (pipeline/evaluation/paired.py) and benchmarks/compare_runs.py."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from pipeline.errors import InputError
from pipeline.evaluation.paired import paired_comparison, paired_difference, sign_test_p

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("compare_runs", ROOT / "benchmarks" / "compare_runs.py")
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)


def test_paired_difference_of_a_constant_shift_has_a_zero_width_interval():
    a = pd.Series([0.2, 0.5, 0.9], index=["P1", "P2", "P3"])
    shifted = paired_difference(a + 0.1, a)
    assert shifted["mean"] == pytest.approx(0.1) and shifted["ci95"] == pytest.approx([0.1, 0.1]) and shifted["n"] == 3


def test_paired_difference_pairs_by_patient_and_drops_the_unpaired():
    new = pd.Series([0.9, 0.1, 0.5, np.nan], index=["P3", "P1", "P9", "P2"])
    base = pd.Series([0.0, 0.3, 0.8], index=["P1", "P2", "P3"])  # P9 only in new, P2 NaN in new
    result = paired_difference(new, base)
    assert result["n"] == 2 and result["mean"] == pytest.approx((0.1 + 0.1) / 2)
    low, high = paired_difference(pd.Series([0.0, 1.0, 0.5, 0.2]), pd.Series([0.1, 0.2, 0.5, 0.6]))["ci95"]
    assert low < high  # a spread of differences gives an interval of width
    with pytest.raises(ValueError, match="no patient"):
        paired_difference(pd.Series([0.5], index=["A"]), pd.Series([0.5], index=["B"]))


@pytest.mark.parametrize("up, down", [(9, 1), (28, 11), (18, 14), (3, 0), (0, 7), (20, 20), (33, 6)])
def test_sign_test_p_is_scipys_two_sided_binomial_test(up, down):
    assert sign_test_p(up, down) == pytest.approx(binomtest(min(up, down), up + down, 0.5).pvalue)
    assert sign_test_p(up, down) == sign_test_p(down, up)


def test_sign_test_p_known_values():
    assert sign_test_p(9, 1) == pytest.approx(22 / 1024)
    assert sign_test_p(0, 0) == 1.0 and sign_test_p(5, 5) == 1.0
    assert sign_test_p(28, 11) < 0.05 < sign_test_p(18, 14)  # the README's 20-epoch and deep-supervision rows


def test_paired_comparison_counts_the_patients_that_move_beyond_the_margin():
    base = pd.Series([0.5, 0.5, 0.5, 0.5, 0.5], index=list("ABCDE"))
    new = base + pd.Series([0.1, -0.01, 0.003, 0.2, -0.004], index=list("ABCDE"))
    result = paired_comparison(new, base, margin=0.005)
    assert (result["up"], result["down"]) == (2, 1)  # 0.003 and -0.004 stay within the margin
    assert result["median"] == pytest.approx(0.003) and result["mean"] == pytest.approx(0.0578)
    assert result["sign_test_p"] == pytest.approx(sign_test_p(2, 1))
    wide = paired_comparison(new, base, margin=0.05)
    assert (wide["up"], wide["down"]) == (2, 0)


def patients_csv(path: Path, dice: dict[str, float], split: str = "val", extra: bool = True) -> Path:
    """An eval/patients.csv with ``dice``'s patients (with tumour) in ``split``, a tumour-free one and a test one."""
    rows = [{"patient_id": p, "split": split, "has_tumour": True, "dice_cascade": d} for p, d in dice.items()]
    if extra:
        rows += [{"patient_id": "FREE", "split": split, "has_tumour": False, "dice_cascade": 0.0},  # marked: 0
                 {"patient_id": "TEST", "split": "test" if split == "val" else "val", "has_tumour": True,
                  "dice_cascade": 0.0}]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).assign(n_slices=20).to_csv(path, index=False)
    return path


def test_compare_runs_pairs_two_runs_out_of_fold(tmp_path):
    base_run = tmp_path / "base"  # a kept run: its reports/eval/patients.csv
    patients_csv(base_run / "reports" / "eval" / "patients.csv", {"A": 0.8, "B": 0.6, "C": 0.0, "D": 0.9})
    new_csv = patients_csv(tmp_path / "new.csv", {"A": 0.85, "B": 0.6, "C": 0.7, "E": 0.5})  # a saved table
    result = compare_runs.compare(new_csv, base_run, "val", movers=2)
    assert result["paired"]["n"] == 3 and result["paired"]["mean"] == pytest.approx((0.05 + 0 + 0.7) / 3)
    assert (result["paired"]["up"], result["paired"]["down"]) == (2, 0)
    assert result["only_new"] == ["E"] and result["only_base"] == ["D"]
    assert [m["patient_id"] for m in result["movers"]] == ["C", "A"]  # the largest change first
    assert result["summary"]["base"]["dice_mean"] == pytest.approx(1.4 / 3)  # over the compared patients only
    assert json.loads(json.dumps(result)) == result  # what the command prints


def test_compare_runs_names_the_file_of_a_bad_table(tmp_path):
    with pytest.raises(InputError, match="patients.csv: not found"):
        compare_runs.compare(tmp_path / "nothing", tmp_path / "nothing")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"patient_id": ["A"], "split": ["val"]}).to_csv(bad, index=False)
    with pytest.raises(InputError, match=r"bad.csv: lacks the column\(s\) has_tumour, dice_cascade"):
        compare_runs.compare(bad, bad)
    only_test = patients_csv(tmp_path / "t.csv", {"A": 0.5}, split="test", extra=False)
    with pytest.raises(InputError, match="t.csv: no 'val' patient with tumour"):
        compare_runs.compare(only_test, only_test)
    with pytest.raises(InputError, match="o.csv: no 'val' patient in common"):
        compare_runs.compare(patients_csv(tmp_path / "o.csv", {"Z": 0.5}), patients_csv(tmp_path / "p.csv", {"Y": 0.1}))


@pytest.mark.parametrize("column, value, problem", [
    ("dice_cascade", "abc", "dice_cascade of patient B is 'abc', not a number in \\[0, 1\\]"),
    ("dice_cascade", "", "dice_cascade of patient B is empty"),
    ("dice_cascade", "inf", "dice_cascade of patient B is 'inf'"),
    ("dice_cascade", "1.5", "dice_cascade of patient B is '1.5'"),
    ("has_tumour", "yes", "has_tumour: 'yes' is not True or False"),
    ("has_tumour", "", "has_tumour: empty is not True or False"),
    ("patient_id", "A", "patient A appears twice"),
])
def test_compare_runs_refuses_a_table_it_would_misread(tmp_path, column, value, problem):
    path = patients_csv(tmp_path / "run.csv", {"A": 0.5, "B": 0.7, "C": 0.9})
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.loc[table.patient_id == "B", column] = value
    table.to_csv(path, index=False)
    with pytest.raises(InputError, match=f"run.csv: {problem}"):
        compare_runs.compare(path, path)


def test_compare_runs_reads_has_tumour_written_as_1_0_and_ids_as_text(tmp_path):
    path = tmp_path / "run.csv"
    path.write_text("patient_id,split,has_tumour,dice_cascade\n001,val,1,0.5\n002,val,0,1.0\n010,val,true,0.8\n")
    result = compare_runs.compare(path, path)
    assert result["paired"]["n"] == 2 and result["paired"]["mean"] == 0.0
    assert sorted(m["patient_id"] for m in result["movers"]) == ["001", "010"]


def test_compare_runs_command_prints_one_json_line_or_one_error_line(tmp_path):
    a = patients_csv(tmp_path / "a.csv", {"A": 0.5, "B": 0.7})
    b = patients_csv(tmp_path / "b.csv", {"A": 0.4, "B": 0.7})
    ok = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare_runs.py"), str(a), str(b), "--split", "val"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["paired"]["up"] == 1
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare_runs.py"), str(a), str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and not bad.stdout
    assert len(bad.stderr.strip().splitlines()) == 1 and "patients.csv: not found" in bad.stderr
    negative = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare_runs.py"), str(a), str(b),
                               "--movers", "-1"], capture_output=True, text=True, timeout=120)
    assert negative.returncode == 2 and "'-1' is not a finite number >= 0" in negative.stderr


@pytest.mark.parametrize(("name", "mean", "median"), [
    ("lgg_recipe_seed0_oof_patients.csv", 0.811, 0.868),  # the final command (classifier 4 / segmenter 20 epochs)
    ("lgg_recipe_8_16_seed0_oof_patients.csv", 0.810, 0.861),  # the command before it (8 / 16 epochs)
])
def test_the_reference_runs_read_as_a_base(name, mean, median):
    """benchmarks/reference: seed-0 runs out of fold (README, "How the recipe was chosen"), with the README's row."""
    dice = compare_runs.patient_dice(ROOT / "benchmarks" / "reference" / name, "val")
    assert len(dice) == 50 and dice.index.str.startswith("TCGA_").all()
    assert round(dice.mean(), 3) == mean and round(dice.median(), 3) == median
