"""The HTML report: built from fake evaluate/training outputs, self-contained, escaped, NaN-tolerant.

The browser test opens the page in headless Chromium (skipped when /usr/bin/chromium is absent)
and checks for script errors, broken images and that the per-patient table sorts.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_outputs import FakeRun, fake_params, write_fake_outputs

from pipeline.errors import InputError
from pipeline.report import build_report
from pipeline.report.build import git_revision

HOSTILE = "<script>alert(1)</script>"


def build(run: FakeRun, **kwargs: object) -> str:
    path = build_report(**run.build_kwargs(), **kwargs)
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[FakeRun, str, float]:
    """The default fake demo run (30 patients, ~20 gallery images) and its report; build seconds."""
    run = write_fake_outputs(tmp_path_factory.mktemp("default"))
    start = time.perf_counter()
    html = build(run)
    return run, html, time.perf_counter() - start


def test_sections_present(default_run):
    _, html, _ = default_run
    for section in ("summary", "run", "classifier", "confusion", "calibration", "dice", "patients", "cases",
                    "gradcam", "training", "howto"):
        assert f'<section id="{section}"' in html, section
    assert html.count('class="card"') == 6
    assert "Youden" in html and "validation" in html


def test_headline_numbers_come_from_metrics(default_run):
    run, html, _ = default_run
    test = run.metrics["test"]
    assert f"{test['classifier']['auc']:.3f}" in html
    assert f"{100 * test['classifier']['sensitivity']:.1f}%" in html
    cards = html.split('class="card"', 1)[1].split("</section>", 1)[0]  # the cards: the final masks' slice calls
    calls, gate = test["cascade_slices"], test["classifier"]
    assert calls["tp"] < gate["tp"], "the fake segmenter misses tumour slices the gate passes"
    assert f"{100 * calls['sensitivity']:.1f}%" in cards and f"{100 * calls['specificity']:.1f}%" in cards
    assert f"{calls['tp']} of {calls['tp'] + calls['fn']} tumour slices" in cards
    assert f"{gate['tp']} of {gate['tp'] + gate['fn']} tumour slices" not in cards
    assert f"{test['cascade']['dice_patient_median']:.3f}" in html
    assert f"{run.metrics['threshold']['value']:.3f}" in html
    assert "HD95" in html and "(px)" in html


def test_self_contained_no_external_urls(default_run):
    _, html, _ = default_run
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert "http://" not in html and "https://" not in html
    assert "@import" not in html and "url(" not in html
    assert "<link" not in html and not re.search(r"<script[^>]+src=", html)


def test_every_image_is_an_embedded_png(default_run):
    run, html, _ = default_run
    sources = re.findall(r'<img src="([^"]*)"', html)
    gallery = json.loads((run.eval_dir / "gallery.json").read_text())
    cases = json.loads((run.eval_dir / "cases.json").read_text())
    # ROC, PR, confusion, calibration, Dice, 2 training figures + every gallery pair + cases
    assert len(sources) == 7 + 2 * len(gallery) + len(cases)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_build_is_fast_and_small(default_run):
    _, html, seconds = default_run
    assert seconds < 15, f"report took {seconds:.1f} s"
    assert len(html) < 3_000_000


def test_write_is_atomic_and_leaves_no_temp_files(default_run):
    run, _, _ = default_run
    assert run.out_html.exists()
    assert not list(run.reports_dir.glob(".index.tmp-*"))


def test_warning_banners_follow_pretrained_and_source(default_run, tmp_path):
    _, not_pretrained, _ = default_run  # demo data, classifier not pretrained
    assert "Classifier NOT pretrained" in not_pretrained and "banner banner-danger" in not_pretrained
    assert "Synthetic demo data" in not_pretrained
    html = build(write_fake_outputs(tmp_path, n_patients=12, pretrained=True, source="brats2021"))
    assert "NOT pretrained" not in html and "banner banner-danger" not in html
    assert "Synthetic demo data" not in html
    assert "HD95, median (mm)" in html and "mm³" in html


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[FakeRun, str]:
    """Markup in patient ids and skipped reasons, NaN metrics, and no false negatives in the gallery."""
    ids = [HOSTILE] + [f"<script>alert({i})</script>" for i in range(2, 13)]
    run = write_fake_outputs(tmp_path_factory.mktemp("hostile"), n_patients=12, patient_ids=ids, nan_metrics=True,
                             gallery_groups=("TP", "FP", "TN"),
                             skipped=[("data/raw/<b>x</b>", '<img src=x onerror="alert(2)">')])
    return run, build(run)


def test_text_from_data_is_escaped(hostile_run):
    _, html = hostile_run
    assert "<script>alert(" not in html
    assert "&lt;script&gt;alert(" in html  # shown, escaped (per-patient table, gallery captions)
    assert '<img src=x onerror="alert(2)">' not in html and "&lt;img src=x onerror=" in html
    assert "<b>x</b>" not in html
    assert html.count("<script") == 1  # only the report's own inline script


def test_nan_metrics_and_missing_gallery_group_render_as_dashes(hostile_run):
    _, html = hostile_run
    assert "—" in html
    assert "No false negatives in the gallery" in html
    visible = re.sub(r'<img src="[^"]*"', "", html)
    assert not re.search(r">\s*nan\s*<|\bNaN\b|\bnan%|>None<|\binf\b", visible, re.I)
    assert 'data-v=""' in html  # blank sort keys for missing values


def test_missing_optional_inputs_become_notes(tmp_path):
    run = write_fake_outputs(tmp_path, n_patients=12)
    for name in ("cases.json", "gallery.json", "patients.csv", "plots/roc_test.csv", "plots/roc_val.csv"):
        (run.eval_dir / name).unlink()
    shutil.rmtree(run.reports_dir / "train_segmenter")
    (run.slices_dir / "manifest.csv").unlink()
    (run.models_dir / "classifier.json").unlink()
    html = build(run)
    assert "ROC curve: not available" in html
    assert "No example cases" in html
    assert "No dvclive training log was found for the segmenter" in html
    assert "no per-patient table" in html
    assert '<section id="missing-inputs"' in html
    for section in ("classifier", "confusion", "dice", "gradcam"):
        assert f'<section id="{section}"' in html


def test_missing_metrics_json_is_an_input_error(tmp_path):
    run = write_fake_outputs(tmp_path, n_patients=12)
    (run.eval_dir / "metrics_full.json").unlink()
    with pytest.raises(InputError, match="metrics_full.json"):
        build_report(**run.build_kwargs())
    assert not run.out_html.exists()


def test_git_revision(tmp_path):
    assert git_revision(tmp_path) == "unknown"
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       check=True, capture_output=True)

    git("init", "-q")
    (repo / "a.txt").write_text("1")
    git("add", "a.txt")
    git("commit", "-q", "-m", "init")
    clean = git_revision(repo)
    assert re.fullmatch(r"[0-9a-f]{4,40}", clean)
    (repo / "a.txt").write_text("2")
    assert git_revision(repo) == clean + "-dirty"


def test_stage_writes_reports_index_html(tmp_path, monkeypatch):
    from pipeline.stages import report

    run = write_fake_outputs(tmp_path, n_patients=12, params=fake_params())
    monkeypatch.chdir(tmp_path)
    report.run(run.params)
    assert (tmp_path / "reports" / "index.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


# --- in a browser -----------------------------------------------------------------------------------

PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  __errors.push("error: " + (e.message || (e.target && e.target.outerHTML ? e.target.outerHTML.slice(0, 80) : "?")));
}, true);
window.addEventListener("unhandledrejection", function (e) { __errors.push("rejection: " + e.reason); });
document.addEventListener("securitypolicyviolation", function (e) { __errors.push("csp: " + e.violatedDirective + " " + e.blockedURI); });
(function () {
  var original = console.error;
  console.error = function () { __errors.push("console.error: " + Array.prototype.join.call(arguments, " ")); return original.apply(console, arguments); };
})();
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).map(function (i) { return i.alt; });
  var sorts = {};
  var table = document.querySelector("table.sortable");
  function column(index) {
    return Array.prototype.map.call(table.tBodies[0].rows, function (r) { return r.cells[index].getAttribute("data-v"); });
  }
  if (table) {
    ["dice_cascade", "hd95_cascade", "patient_id"].forEach(function (key) {
      var th = table.querySelector('th[data-col="' + key + '"]');
      var index = Array.prototype.indexOf.call(th.parentNode.children, th);
      var before = column(index);
      th.click(); var asc = column(index); var ascAria = th.getAttribute("aria-sort");
      th.click(); var desc = column(index); var descAria = th.getAttribute("aria-sort");
      sorts[key] = {before: before, asc: asc, desc: desc, asc_aria: ascAria, desc_aria: descAria};
    });
  }
  var result = {errors: window.__errors, images: images.length, broken: broken, sorts: sorts};
  var pre = document.createElement("pre");
  pre.id = "probe-result";
  pre.textContent = btoa(unescape(encodeURIComponent(JSON.stringify(result))));
  document.body.appendChild(pre);
});
</script>"""


def _probe(chromium, html_path: Path, tmp_path: Path) -> tuple[dict, str]:
    """Open a copy of the page with PROBE injected first in <head>; returns (probe result, stderr)."""
    page = tmp_path / "probed.html"
    html = html_path.read_text(encoding="utf-8")
    page.write_text(html.replace('<meta charset="utf-8">', '<meta charset="utf-8">' + PROBE, 1), encoding="utf-8")
    done = chromium("--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    found = re.search(r'<pre id="probe-result">([A-Za-z0-9+/=]+)</pre>', done.stdout)
    assert found, f"no probe result (rc {done.returncode}); stderr:\n{done.stderr[-3000:]}"
    return json.loads(base64.b64decode(found.group(1)).decode("utf-8")), done.stderr


def _numbers(keys: list[str]) -> list[float]:
    return [float(k) for k in keys if k != ""]


def test_report_in_headless_chromium(chromium, default_run, tmp_path):
    run, _, _ = default_run
    result, stderr = _probe(chromium, run.out_html, tmp_path)
    assert result["errors"] == []
    assert "Uncaught" not in stderr
    assert result["images"] >= 7 and result["broken"] == []

    dice = result["sorts"]["dice_cascade"]
    assert dice["asc_aria"] == "ascending" and dice["desc_aria"] == "descending"
    assert _numbers(dice["asc"]) == sorted(_numbers(dice["before"]))
    assert _numbers(dice["desc"]) == sorted(_numbers(dice["before"]), reverse=True)

    hd = result["sorts"]["hd95_cascade"]  # tumour-free patients have no HD95: blanks stay last
    n_blank = hd["before"].count("")
    assert n_blank > 0
    assert hd["asc"][len(hd["asc"]) - n_blank:] == [""] * n_blank
    assert hd["desc"][len(hd["desc"]) - n_blank:] == [""] * n_blank
    assert _numbers(hd["asc"]) == sorted(_numbers(hd["before"]))

    ids = result["sorts"]["patient_id"]
    assert ids["desc"] == list(reversed(ids["asc"])) and sorted(ids["asc"]) == sorted(ids["before"])


def test_hostile_report_runs_no_injected_script_in_chromium(chromium, hostile_run, tmp_path):
    run, _ = hostile_run
    result, _ = _probe(chromium, run.out_html, tmp_path)
    assert result["errors"] == [] and result["broken"] == []


def test_cross_validation_figures_next_to_the_test_figures(tmp_path):
    """With split.folds > 1 the Dice table labels the validation rows out of fold and the test rows the
    ensemble, and the spread over folds is written out."""
    run = write_fake_outputs(tmp_path)
    path = run.reports_dir / "eval" / "metrics_full.json"
    metrics = json.loads(path.read_text())
    metrics["cross_validation"] = {"folds": 3, "dice_patient_mean_per_fold": [0.61, 0.72, 0.83],
                                   "dice_patient_mean_sd": 0.11, "dice_patient_mean_min": 0.61,
                                   "dice_patient_mean_max": 0.83, "auc_per_fold": [0.9, 0.91, 0.92]}
    path.write_text(json.dumps(metrics))
    html = build(run)
    assert "out of fold (3 folds)" in html and "test, ensemble" in html
    assert "0.610, 0.720, 0.830 (sd 0.110, min 0.610, max 0.830)" in html
    assert "out of fold" not in build(write_fake_outputs(tmp_path / "single"))


def test_folds_get_a_row_each_and_no_test_split_shows_the_out_of_fold_figures(tmp_path):
    """With folds the split table has a row per fold (and test); with no test split (split.test 0, the test
    metrics null) the headline cards, tag and a banner say the figures are out of fold."""
    from pipeline.evaluation.schema import METRICS, blank

    run = write_fake_outputs(tmp_path)
    split = pd.read_csv(run.split_csv)
    non_test = split.split != "test"
    split["fold"] = pd.Series(np.arange(non_test.sum()) % 3, index=split.index[non_test]).astype("Int64")
    split.loc[non_test, "split"] = "train"
    split.to_csv(run.split_csv, index=False)
    html = build(run)
    for fold in range(3):
        n = int((split.fold == fold).sum())
        assert re.search(rf"<td>fold {fold}</td><td class=\"n\">{n}</td>", html)
    assert "Test AUC" in html and "No test split" not in html

    path = run.reports_dir / "eval" / "metrics_full.json"
    metrics = json.loads(path.read_text())
    metrics["test"] = blank(METRICS.keys["test"])
    path.write_text(json.dumps(metrics))
    html = build(run)
    assert "No test split" in html and "Test AUC" not in html and "out of fold, no test split" in html
    auc = metrics["val"]["classifier"]["auc"]
    assert re.search(rf"Out-of-fold AUC</div>\s*<div class=\"card-value\">{auc:.3f}</div>", html)
