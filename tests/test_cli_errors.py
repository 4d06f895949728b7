"""The command line on bad input and in general: one line naming the file and the problem, exit 2, no
traceback, nothing half-written, no input byte changed; and no library noise on stderr (issue 13)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from bad_files import COMPRESSIONS, truncate, write_compressed_tiff

ROOT = Path(__file__).resolve().parents[1]
CASES = ("TCGA_CS_4941_19960909", "TCGA_DU_0001_20000101")
OUR_LINE = re.compile(r"^(error: |\d\d:\d\d:\d\d \w+ +pipeline[.:])")  # our error line or a pipeline log line
NOISE = ("cuInit", "oneDNN", "absl", "I0000", "W0000", "E0000", "cuda", "Traceback")


def cli(*args: str, cwd: Path, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m pipeline ARGS`` (or ``python -c CODE``) as a user runs it: no TensorFlow log settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "OPENCV_LOG_LEVEL")}
    cmd = [sys.executable, "-c", code] if code is not None else [sys.executable, "-m", "pipeline", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def kaggle_root(root: Path) -> Path:
    for name in CASES:
        folder = root / name
        folder.mkdir(parents=True)
        for n in range(1, 4):
            image = np.full((32, 32, 3), 20 + n, np.uint8)
            mask = np.zeros((32, 32), np.uint8)
            mask[4:9, 4:9] = 255 * (n % 2)
            tifffile.imwrite(folder / f"{name}_{n}.tif", image, photometric="rgb", compression="zlib")
            tifffile.imwrite(folder / f"{name}_{n}_mask.tif", mask, compression="zlib")
    return root


def params_file(folder: Path, root: Path, on_error: str = "fail") -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source="lgg", root=str(root), image_size=32, on_error=on_error)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("compression", sorted(COMPRESSIONS))
def test_ingest_of_a_truncated_compressed_tiff_exits_2_with_one_line(tmp_path: Path, compression: str) -> None:
    root = kaggle_root(tmp_path / "kaggle_3m")
    broken = root / CASES[1] / f"{CASES[1]}_2.tif"
    write_compressed_tiff(broken, np.full((32, 32, 3), 7, np.uint8), compression)
    truncate(broken, 0.6)
    before = digest(root)
    result = cli("ingest", "--params", str(params_file(tmp_path, root)), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and errors[0].startswith(f"error: {broken}: not a readable TIFF ("), result.stderr
    assert all(OUR_LINE.match(line) for line in result.stderr.splitlines()), result.stderr  # no library noise
    assert not (tmp_path / "data" / "slices").exists(), "nothing half-written"
    assert digest(root) == before, "no input byte changed"


def test_ingest_skips_a_truncated_tiff_under_on_error_skip(tmp_path: Path) -> None:
    root = kaggle_root(tmp_path / "kaggle_3m")
    broken = root / CASES[0] / f"{CASES[0]}_3_mask.tif"
    truncate(broken, 0.7)  # deflate data cut short
    result = cli("ingest", "--params", str(params_file(tmp_path, root, on_error="skip")), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    skipped = (tmp_path / "data" / "slices" / "skipped.csv").read_text()
    assert str(broken) in skipped and "not a readable TIFF" in skipped
    assert not error_lines(result.stderr) and all(OUR_LINE.match(line) for line in result.stderr.splitlines())


def test_a_command_that_loads_tensorflow_prints_one_error_line_and_no_noise(tmp_path: Path) -> None:
    """`predict` imports TensorFlow, then fails on the missing models: only our error line on stderr."""
    (tmp_path / "scans").mkdir()
    result = cli("predict", "scans", "-o", "out", "--models", "nomodels", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == error_lines(result.stderr)
    assert len(error_lines(result.stderr)) == 1 and "nomodels" in result.stderr


def test_library_noise_and_python_warnings_go_to_the_log(tmp_path: Path) -> None:
    code = ("import pipeline.__main__ as cli\n"
            "cli._setup_logging(False)\n"
            "import importlib.util\n"
            "assert importlib.util.find_spec('tensorflow')  # as Keras asks before it imports it\n"
            "import warnings, keras, absl.logging\n"
            "keras.layers.Dense(1)(keras.ops.ones((1, 2)))\n"
            "for _ in range(3):\n"
            "    warnings.warn('careful now', UserWarning)\n"
            "absl.logging.warning('chatter')\n"
            "import logging\n"  # what TensorFlow logs when k fold models each trace their predict function
            "logging.getLogger('tensorflow').warning('5 out of the last 9 calls to <function f> triggered "
            "tf.function retracing.')\n"
            "logging.getLogger('tensorflow').warning('a real problem')\n")
    result = cli(cwd=tmp_path, code=code)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert not [line for line in lines if any(word in line for word in NOISE)], result.stderr
    warned = [line for line in lines if "careful now" in line]
    assert len(warned) == 1 and "WARNING" in warned[0] and "UserWarning" in warned[0]
    assert "retracing" not in result.stderr and "a real problem" in lines[-1]  # only the expected warning is hidden
    assert len(lines) == 2, result.stderr
