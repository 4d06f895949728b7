"""Two runs compared patient by patient: the paired figures of the README's "How the recipe was chosen".

A difference of two means says little when a few patients swing it; the recipe's settings were judged on the
per-patient Dice of the same patients scored by each run (``pipeline.evaluation.paired``):

    python benchmarks/quality_lgg.py ... --keep /tmp/base
    python benchmarks/quality_lgg.py ... --set segmenter.loss=tversky --keep /tmp/new
    python benchmarks/compare_runs.py /tmp/new /tmp/base          # out of fold: the "val" rows
    python benchmarks/compare_runs.py /tmp/new /tmp/base --split test

NEW and BASE are each a workspace, a run kept by ``quality_lgg.py --keep``, or an ``eval/patients.csv`` saved from
one. With ``split.folds`` > 1 every non-test patient is "val", scored out of fold. Only patients with tumour count
(on a tumour-free patient Dice is 1 or 0: whether anything was marked, not how well a tumour was outlined), and
only those both runs scored. Prints one JSON line: {"benchmark":
"compare_runs", "new", "base", "split", "summary": {"new" | "base": {"dice_mean", "dice_median", "dice_p5", "n"}}
(over the compared patients), "paired": {"mean", "ci95" (patient bootstrap), "n", "median", "up", "down" (patients
moving by more than --margin), "sign_test_p"}, "only_new" / "only_base": patients one run lacks, "movers": the
--movers largest changes [{"patient_id", "base", "new", "change"}]}. A missing or malformed table: one line naming
the file, exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pipeline.quiet  # noqa: E402,F401  (no library noise on the console)
from pipeline.errors import InputError, one_line  # noqa: E402
from pipeline.evaluation.metrics import summarise  # noqa: E402
from pipeline.evaluation.paired import MOVE_MARGIN, paired_comparison  # noqa: E402
from pipeline.paths import EVAL_DIR  # noqa: E402

log = logging.getLogger("compare_runs")
COLUMNS = ("patient_id", "split", "has_tumour", "dice_cascade")
BOOLEAN = {"true": True, "1": True, "false": False, "0": False}  # has_tumour as pandas writes it, or 1 / 0


def patients_table(source: Path) -> Path:
    """The per-patient table of ``source``: the file itself, or ``<source>/reports/eval/patients.csv``."""
    return source if source.is_file() else source / EVAL_DIR / "patients.csv"


def shown(cell: object) -> str:
    """A CSV cell as an error message quotes it: its text, or "empty"."""
    return "empty" if pd.isna(cell) else repr(cell)


def patient_dice(source: Path, split: str) -> pd.Series:
    """The cascade's per-patient Dice of ``split``'s patients with tumour (index: patient id), from ``source``'s
    eval/patients.csv. InputError naming the file when it is missing, lacks a column or has no such patient."""
    path = patients_table(source)
    if not path.is_file():
        raise InputError(path, "not found: NEW and BASE are workspaces, runs kept with --keep, or eval/patients.csv")
    try:
        table = pd.read_csv(path, dtype=dict.fromkeys(COLUMNS, str))  # the text as written, parsed below
    except (OSError, ValueError, pd.errors.ParserError) as e:  # EmptyDataError and UnicodeDecodeError among them
        raise InputError(path, f"not a readable CSV ({one_line(str(e))})") from e
    missing = [c for c in COLUMNS if c not in table]
    if missing:
        raise InputError(path, f"lacks the column(s) {', '.join(missing)} of evaluate's patients.csv")
    has_tumour = table.has_tumour.str.strip().str.lower().map(BOOLEAN)
    if has_tumour.isna().any():
        raise InputError(path, f"has_tumour: {shown(table.has_tumour[has_tumour.isna()].iloc[0])} is not True or False")
    rows = table[(table.split == split) & has_tumour.astype(bool)]
    if rows.empty:
        raise InputError(path, f"no {split!r} patient with tumour")
    if rows.patient_id.duplicated().any():
        raise InputError(path, f"patient {rows.patient_id[rows.patient_id.duplicated()].iloc[0]} appears twice")
    dice = pd.to_numeric(rows.dice_cascade, errors="coerce")
    bad = ~dice.between(0.0, 1.0)  # NaN, text and inf among them
    if bad.any():
        raise InputError(path, f"dice_cascade of patient {rows.patient_id[bad].iloc[0]} is "
                               f"{shown(rows.dice_cascade[bad].iloc[0])}, not a number in [0, 1]")
    return pd.Series(dice.to_numpy(float), index=rows.patient_id.to_numpy(), name="dice_cascade")


def compare(new_source: Path, base_source: Path, split: str = "val", margin: float = MOVE_MARGIN,
            movers: int = 5) -> dict:
    """The JSON object the command prints (module docstring). InputError as ``patient_dice``, or naming NEW's
    table when the two runs share no patient."""
    new, base = patient_dice(new_source, split), patient_dice(base_source, split)
    both = new.index.intersection(base.index)
    if both.empty:
        raise InputError(patients_table(new_source), f"no {split!r} patient in common with {base_source}")
    new_b, base_b = new[both], base[both]
    change = (new_b - base_b).sort_values(key=abs, ascending=False, kind="stable")

    def summary(dice: pd.Series) -> dict:
        s = summarise(dice.to_numpy())
        return {"dice_mean": s["mean"], "dice_median": s["median"], "dice_p5": s["p5"], "n": s["n"]}

    return {
        "benchmark": "compare_runs", "new": str(new_source), "base": str(base_source), "split": split,
        "summary": {"new": summary(new_b), "base": summary(base_b)},
        "paired": paired_comparison(new_b, base_b, margin),
        "only_new": sorted(new.index.difference(both)), "only_base": sorted(base.index.difference(both)),
        "movers": [{"patient_id": pid, "base": float(base_b[pid]), "new": float(new_b[pid]), "change": float(d)}
                   for pid, d in change.head(movers).items()],
    }


def non_negative(kind: type) -> Callable[[str], float | int]:
    """An argparse type: ``kind`` of the text, finite and >= 0."""
    def parse(text: str) -> float | int:
        value = kind(text)
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number >= 0")
        return value
    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("new", type=Path, help="a workspace, a run kept with --keep, or an eval/patients.csv")
    parser.add_argument("base", type=Path, help="the same for the run it is compared against")
    parser.add_argument("--split", choices=("val", "test"), default="val",
                        help="val: out of fold with split.folds > 1 (default); test: the test patients")
    parser.add_argument("--margin", type=non_negative(float), default=MOVE_MARGIN,
                        help=f"a patient moves when its Dice changes by more than this (default {MOVE_MARGIN})")
    parser.add_argument("--movers", type=non_negative(int), default=5, help="how many of the largest changes to list")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = compare(args.new, args.base, args.split, args.margin, args.movers)
    except InputError as e:
        log.error("%s", one_line(str(e)))
        sys.exit(2)
    print(json.dumps(result, allow_nan=False))


if __name__ == "__main__":
    main()
