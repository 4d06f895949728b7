"""``python -m pipeline export [--models DIR] -o OUTDIR``: the model bundle with its models as ONNX.

Writes OUTDIR/classifier.onnx and segmenter.onnx (and each fold model of an ensemble at its own path, as
.onnx) (Keras 3's ``Model.export(format="onnx")``, which converts
through tf2onnx; the custom layers ``BackbonePreprocess`` and ``PerImageStandardization`` become plain ONNX
ops), the two sidecars copied unchanged, and a cascade.json that is the Keras bundle's with
"format": "onnx", "models" naming the ONNX files and "sha256" theirs (``pipeline.evaluation.bundle``). OUTDIR
is a complete bundle: ``python -m pipeline predict --models OUTDIR`` runs it on ONNX Runtime, without
TensorFlow or keras (``pipeline.evaluation.onnx_model``).

Each exported model is checked before anything is written: on ``CHECK_IMAGES`` random uint8 images its
ONNX Runtime outputs must equal the Keras model's within ``TOLERANCE``. OUTDIR is written atomically
(a failed export leaves nothing, or the previous export, there); a folder that holds something other
than a model bundle is never replaced. Needs the export extra (``pip install .[export]``: onnx, tf2onnx,
onnxruntime) and the TensorFlow or JAX backend.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from pipeline.errors import InputError, PipelineError, one_line
from pipeline.evaluation.bundle import CASCADE_FILE, FORMATS, read_bundle
from pipeline.evaluation.onnx_model import load_onnx_model
from pipeline.paths import MODELS_DIR
from pipeline.writing import atomic_dir, check_no_overlap

log = logging.getLogger(__name__)

CHECK_IMAGES = 4  # random images each exported model is checked on
TOLERANCE = 1e-4  # largest |Keras - ONNX Runtime| output difference accepted (probabilities in [0, 1])


def export_bundle(models_dir: str | Path, out_dir: str | Path) -> dict[str, float]:
    """Export the Keras bundle ``models_dir`` as an ONNX bundle in ``out_dir`` (see the module docstring).
    Returns role -> the largest |Keras - ONNX Runtime| output on the check images (over an ensemble's models). InputError naming the
    file for an unusable bundle or output folder; PipelineError when an exported model does not match."""
    from pipeline.evaluation.cascade import check_role, load_model_file

    models_dir, out_dir = Path(models_dir), Path(out_dir)
    bundle = read_bundle(models_dir)
    if bundle.format != "keras":
        raise InputError(models_dir / CASCADE_FILE, f"is already a {bundle.format} bundle; export a Keras bundle")
    check_no_overlap(out_dir, [models_dir])
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / CASCADE_FILE).is_file():
        raise InputError(out_dir, "exists and holds something other than a model bundle; refusing to replace it")
    _check_backend()
    size = bundle.task.image_size
    exported: dict[str, list[str]] = {"classifier": [], "segmenter": []}
    differences: dict[str, float] = {}
    with atomic_dir(out_dir) as tmp:
        for role, names in (("classifier", bundle.classifiers), ("segmenter", bundle.segmenters)):
            for name in names:  # one model, or the fold models of an ensemble
                source = models_dir / name
                model = load_model_file(source)
                check_role(model, role, source)
                onnx_name = str(PurePosixPath(name).with_suffix(FORMATS["onnx"]))
                target = tmp / onnx_name
                target.parent.mkdir(parents=True, exist_ok=True)
                images = np.random.default_rng(0).integers(0, 256, (CHECK_IMAGES, size, size, model.input_shape[-1]))
                difference = export_model(model, size, target, images.astype(np.float32))
                if not difference <= TOLERANCE:
                    raise PipelineError(f"{source}: its ONNX export differs from it by up to {difference:.3g} "
                                        f"(more than {TOLERANCE:g}) on random images; not exported")
                shutil.copyfile(source.with_suffix(".json"), target.with_suffix(".json"))
                exported[role].append(onnx_name)
                differences[role] = max(differences.get(role, 0.0), difference)
                log.info("%s -> %s (%.1f MB), max |keras - onnx| %.2g", name, onnx_name, target.stat().st_size / 1e6,
                         difference)
        dataclasses.replace(bundle, classifiers=tuple(exported["classifier"]), segmenters=tuple(exported["segmenter"]),
                            format="onnx", sha256={}).write(tmp)
    log.info("ONNX bundle -> %s", out_dir)
    return differences


def export_model(model: Any, size: int, path: Path, images: np.ndarray) -> float:
    """Write ``model`` ([B, size, size, C] float32 in, one output; C = 3, or a 2.5-D segmenter's 3 x (2n + 1)) to
    ``path`` as ONNX with a dynamic batch axis; returns the largest |Keras - ONNX Runtime| output over ``images``."""
    import keras

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)  # one INFO line per conversion step otherwise
    signature = [keras.InputSpec(shape=(None, size, size, model.input_shape[-1]), dtype="float32", name="image")]
    model.export(str(path), format="onnx", verbose=False, input_signature=signature)
    expected = np.asarray(model.predict_on_batch(images), np.float32)
    found = load_onnx_model(path).predict_on_batch(images)
    if found.shape != expected.shape:
        raise PipelineError(f"{path.name}: ONNX output {found.shape}, Keras {expected.shape}")
    return float(np.max(np.abs(found - expected)))


def _check_backend() -> None:
    import keras

    if keras.config.backend() not in ("tensorflow", "jax"):
        raise PipelineError(f"export converts through TensorFlow (tf2onnx); the {keras.config.backend()} backend "
                            "cannot give a model with a dynamic batch axis: run it with KERAS_BACKEND=tensorflow")


def main(argv: list[str], setup_logging: Callable[[bool], None]) -> int:
    """``python -m pipeline export``: 0 on success, 2 for an unusable bundle, output folder or export."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline export",
        description="Write the model bundle with its models as ONNX: a complete bundle that "
                    "`python -m pipeline predict --models OUTDIR` runs on ONNX Runtime without TensorFlow.")
    parser.add_argument("--models", type=Path, default=MODELS_DIR,
                        help="the Keras model bundle to export (default: models)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the ONNX bundle (replaced)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        export_bundle(args.models, args.output)
    except PipelineError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    return 0
