"""The pointing game on demo data: Grad-CAM of a classifier with a usefully fine last conv map
points at the tumour far more often than chance.

The default demo classifier (ResNet50 at 64 px) has a 2x2 last-conv map, too coarse for this; the
report shows its score next to chance. Here a small CNN whose last conv map is 8x8 is trained on
demo slices for a few epochs, and the same code the evaluate stage runs scores it. Measured with
this seed: 0.905 (19 of 21 tumour slices) against a chance rate of 0.085; another demo/training
seed gave 0.625 (chance 0.065), and one whose model did not learn gave 0.0, so the test first
checks that the model learned, then asserts >= 0.6 and at least 0.25 above chance.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from tiny_models import tiny_classifier

from pipeline.data.demo import write_kaggle_3m
from pipeline.data.sources.lgg import read_lgg_case
from pipeline.evaluation import metrics as m
from pipeline.evaluation.explain import grad_cam_cells, peak_points


def small_cnn(size: int) -> keras.Model:
    """A CNN whose last conv map is size / 8 a side."""
    return tiny_classifier(size, (16, 32, 32, 32), pool=True, scale=1 / 127.5, offset=-1)


@pytest.mark.slow
def test_gradcam_points_at_demo_tumours(tmp_path):
    keras.utils.set_random_seed(0)
    ids = write_kaggle_3m(tmp_path / "kaggle_3m", patients=16, slices_per_patient=16, image_size=64, seed=11)
    cases = [read_lgg_case(tmp_path / "kaggle_3m" / pid, 64) for pid in ids]
    train, test = cases[:12], cases[12:]
    x = np.concatenate([c.image for c in train]).astype("float32")
    y = np.concatenate([c.mask.reshape(len(c.mask), -1).any(1) for c in train]).astype("float32")
    model = small_cnn(64)
    model.compile(keras.optimizers.Adam(2e-3), "binary_crossentropy")
    model.fit(x, y, batch_size=16, epochs=12, verbose=0, shuffle=True)

    images = np.concatenate([c.image for c in test]).astype("float32")
    masks = np.concatenate([c.mask for c in test])
    labels = masks.reshape(len(masks), -1).any(1)
    assert m.roc_auc(labels, model.predict(images, verbose=0).ravel()) > 0.85, "the small CNN did not learn"
    cells = grad_cam_cells(model, images, "last_conv")
    assert cells.shape[1:] == (8, 8)
    game = m.pointing_game_at(peak_points(cells, 64, 64), masks, m.pointing_tolerance_px(64 / 8), grid=(8, 8))
    assert game["n"] >= 15
    assert game["score"] >= 0.6, game
    assert game["score"] >= game["chance"] + 0.25, game
