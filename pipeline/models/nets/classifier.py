"""Tumour-presence classifier: a keras.applications backbone (or one registered by import path,
``registry.register_backbone``) plus a one-unit sigmoid head.

The graph is flat: the backbone is built on our own input tensor (``input_tensor=``), so its
layers are layers of the classifier itself and Grad-CAM reaches the last convolutional block
with ``model.get_layer(info["last_conv_layer"])``.

    image [B, S, S, 3] uint8-range float32
      -> BackbonePreprocess(mode)            ("preprocess")
      -> backbone, include_top=False         (e.g. ... "conv5_block3_out")
      -> GlobalAveragePooling2D              ("avg_pool")
      -> Dropout                             ("head_dropout")
      -> Dense(1, sigmoid, float32)          ("tumour_probability")  [B, 1]

or, with head "max_cell", after the backbone:

      -> Dropout                             ("head_dropout")
      -> Conv2D(1, 1x1, float32)             ("tumour_cells")        [B, h, w, 1] tumour logit per cell
      -> GlobalMaxPooling2D                  ("max_cell")            the slice is as tumorous as its most tumorous cell
      -> Activation(sigmoid, float32)        ("tumour_probability")  [B, 1]

The decision then comes from one cell of the last conv map, so Grad-CAM on that map peaks at the cell
that decided; with ``classifier.localisation_weight`` > 0 those cells also learn where the tumour is.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import keras

from pipeline.errors import InputError
from pipeline.models.nets.layers import BackbonePreprocess
from pipeline.models.registry import BACKBONES, HEADS, Backbone, load  # the choice lists, written once

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "tumour_probability"
CELLS_NAME = "tumour_cells"  # head "max_cell": per-cell tumour logits [B, h, w, 1]
HEAD_LAYERS = ("preprocess", "avg_pool", "head_dropout", CELLS_NAME, "max_cell", OUTPUT_NAME)


def build_classifier(image_size: int, backbone: str = "resnet50", weights: str | None = "imagenet",
                     dropout: float = 0.3, head: str = "average") -> tuple[keras.Model, dict[str, Any]]:
    """Build the classifier for [B, image_size, image_size, 3] uint8-range float32 input.

    ``weights``: "imagenet" (falls back to random initialisation, with one warning, when the
    download fails), "none" / None (random initialisation) or a path to a weights file for the
    backbone without its top (a Keras ``.weights.h5`` or a legacy ``*_notop.h5``, as saved from
    ``keras.applications.X(include_top=False)``).

    Returns (model, info) with info = {"backbone", "pretrained", "weights_source" ("imagenet",
    the path, "none" or "imagenet-unavailable"), "preprocessing", "last_conv_layer"}. The output
    is [B, 1] float32, the tumour probability.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone {backbone!r} is not one of {', '.join(BACKBONES)}")
    if head not in HEADS:
        raise ValueError(f"head {head!r} is not one of {', '.join(HEADS)}")
    spec = BACKBONES[backbone]
    info: dict[str, Any] = {"backbone": backbone, "preprocessing": spec.preprocessing,
                            "last_conv_layer": spec.last_conv_layer}

    if weights is None or weights == "none":
        model, _ = _assemble(spec, image_size, dropout, None, backbone, head)
        return model, {**info, "pretrained": False, "weights_source": "none"}

    if weights == "imagenet":
        try:
            model, _ = _assemble(spec, image_size, dropout, "imagenet", backbone, head)
        # keras.utils.get_file wraps URLError/HTTPError in a plain Exception, and a corrupt cached
        # file fails in load_weights with OSError/ValueError, so Exception is the narrowest class
        # that covers the fetch. A genuine bug in the graph would raise again in the rebuild below.
        except Exception as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.warning("ImageNet weights unavailable (%s); training %s from random initialisation "
                        "— results will be worse than a pretrained run", reason, spec.application)
            model, _ = _assemble(spec, image_size, dropout, None, backbone, head)
            return model, {**info, "pretrained": False, "weights_source": "imagenet-unavailable"}
        return model, {**info, "pretrained": True, "weights_source": "imagenet"}

    path = Path(weights)
    if not path.is_file():
        raise InputError(path, "backbone weights file not found (classifier.weights is imagenet, none or a path)")
    model, base = _assemble(spec, image_size, dropout, None, backbone, head)
    try:
        # Topological loading: a file from another architecture fails loudly (layer count or
        # variable mismatch) instead of loading nothing, as by_name=True would.
        base.load_weights(str(path))
    except (ValueError, OSError) as e:
        raise InputError(path, f"cannot load as {backbone} weights without top ({e})") from None
    log.info("loaded %s backbone weights from %s", backbone, path)
    return model, {**info, "pretrained": True, "weights_source": str(path)}


def _assemble(spec: Backbone, image_size: int, dropout: float, weights: str | None,
              backbone: str, head: str = "average") -> tuple[keras.Model, keras.Model]:
    """A fresh classifier graph and its backbone (whose layers are the classifier's own)."""
    image = keras.Input((image_size, image_size, 3), dtype="float32", name=INPUT_NAME)
    x = BackbonePreprocess(spec.preprocessing, name="preprocess")(image)
    application = load(spec.application) if ":" in spec.application else getattr(keras.applications, spec.application)
    base = application(include_top=False, weights=weights, input_tensor=x)
    if head == "max_cell":
        x = keras.layers.Dropout(dropout, name="head_dropout")(base.output)
        x = keras.layers.Conv2D(1, 1, dtype="float32", name=CELLS_NAME)(x)
        x = keras.layers.GlobalMaxPooling2D(name="max_cell")(x)
        out = keras.layers.Activation("sigmoid", dtype="float32", name=OUTPUT_NAME)(x)
        return keras.Model(image, out, name=f"{backbone}_classifier"), base
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(base.output)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    out = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=OUTPUT_NAME)(x)
    return keras.Model(image, out, name=f"{backbone}_classifier"), base


def zero_init_residual_branches(model: keras.Model, info: dict[str, Any]) -> int:
    """Zero the scale (gamma) of the BatchNormalization that closes each residual branch; returns how many.

    For training from random initialisation: every residual block then starts as the identity
    (its branch outputs 0), so the untrained ResNet50 behaves like a shallow network and trains
    stably (Goyal et al. 2017, "Accurate, Large Minibatch SGD", sec. 5.1; He et al. 2019, "Bag of
    Tricks"). Measured on the demo (64 px, lr 1e-3, ``weights: none``): with it, val AUC 0.94-0.96
    by epoch 3-5 for two seeds; without, 0.43-0.67 over 10 epochs, also at lr 3e-4 and 1e-4.
    Backbones without ``residual_bn`` in BACKBONES are left as they are (returns 0).
    """
    pattern = BACKBONES[info["backbone"]].residual_bn
    if pattern is None:
        return 0
    layers = [layer for layer in model.layers
              if isinstance(layer, keras.layers.BatchNormalization) and re.fullmatch(pattern, layer.name)]
    for layer in layers:
        layer.gamma.assign(keras.ops.zeros(layer.gamma.shape, dtype=layer.gamma.dtype))
    return len(layers)


def backbone_stages(model: keras.Model, info: dict[str, Any]) -> list[list[keras.layers.Layer]]:
    """The backbone's layers grouped by stage, stem first (stages[0]) and the last block last.

    A layer opens stage i when its name starts with ``stage_starts[i-1]``; layers without a
    stage prefix (poolings, the final BN of ResNet50V2/DenseNet121, EfficientNet's top) stay in
    the stage of the layer before them.
    """
    spec = BACKBONES[info["backbone"]]
    stages: list[list[keras.layers.Layer]] = [[] for _ in range(len(spec.stage_starts) + 1)]
    current = 0
    for layer in model.layers:
        if layer.name in HEAD_LAYERS or isinstance(layer, keras.layers.InputLayer):
            continue
        for i, prefix in enumerate(spec.stage_starts, start=1):
            if layer.name.startswith(prefix):
                current = max(current, i)
        stages[current].append(layer)
    return stages


def set_trainable_stages(model: keras.Model, info: dict[str, Any], unfreeze: int | str) -> None:
    """Freeze the backbone, then unfreeze its last ``unfreeze`` stages ("all": the whole backbone).

    Stages: ResNet50/ResNet50V2/DenseNet121 conv5, conv4, conv3, conv2, stem; EfficientNetB0
    block7 (+ top), block6, ..., block1, stem. The head always trains. Frozen BatchNormalization
    layers run in inference mode (Keras 3 semantics of ``trainable=False``); those of unfrozen
    stages train. Recompile the model afterwards.
    """
    stages = backbone_stages(model, info)
    if unfreeze == "all":
        n = len(stages)
    elif isinstance(unfreeze, int) and not isinstance(unfreeze, bool) and unfreeze >= 0:
        n = min(unfreeze, len(stages))
    else:
        raise ValueError(f"unfreeze must be a number of stages >= 0 or 'all', got {unfreeze!r}")
    for i, stage in enumerate(stages):
        for layer in stage:
            layer.trainable = i >= len(stages) - n
    for layer in model.layers:
        if layer.name in HEAD_LAYERS:
            layer.trainable = True
    trainable = sum(int(keras.ops.size(w)) for w in model.trainable_weights)
    log.info("%s: %s of %d backbone stages trainable (%d trainable parameters)",
             info["backbone"], n if unfreeze != "all" else "all", len(stages), trainable)


# ------------------------------------------------------------------------------ localisation supervision

class CellSupervision(keras.layers.Layer):
    """Training only: adds ``weight`` x the mean binary cross-entropy between per-cell tumour logits and
    whether each cell of the feature map holds tumour, and passes the probability through unchanged.

    probability: [B, 1]; cells: float32 logits [B, h, w, 1] (a 1x1 convolution of the last conv map);
    truth: float32 [B, H, W, 1] binary masks, H and W multiples of h and w. A cell's target is 1 when any
    of its H/h x W/w pixels is tumour (max pooling), so tumour-free slices teach every cell "no tumour".
    """

    def __init__(self, weight: float, **kwargs: Any):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.weight = float(weight)

    def call(self, probability: Any, cells: Any, truth: Any) -> Any:
        pool = (truth.shape[1] // cells.shape[1], truth.shape[2] // cells.shape[2])
        target = keras.ops.max_pool(truth, pool, strides=pool)
        loss = keras.ops.binary_crossentropy(target, keras.ops.cast(cells, "float32"), from_logits=True)
        self.add_loss(self.weight * keras.ops.mean(loss))
        return probability

    def compute_output_shape(self, probability_shape: tuple, cells_shape: tuple, truth_shape: tuple) -> tuple:
        return probability_shape


def with_localisation_loss(model: keras.Model, layer_name: str, weight: float) -> keras.Model:
    """The model to ``fit`` when the classifier also learns where the tumour is.

    Takes ``[image [B, S, S, 3], truth [B, S, S, 1]]`` and returns ``model``'s probability [B, 1]. The per-cell
    tumour logits on ``layer_name`` (the last conv map, the one Grad-CAM explains), trained through
    :class:`CellSupervision`, are the model's own ``tumour_cells`` (head "max_cell": they make the decision)
    or else a 1x1 convolution added here, which helps the features but is dropped with this wrapper.
    ``model`` shares every weight and stays the model that is saved and served.
    """
    features = model.get_layer(layer_name).output
    size, grid = tuple(model.input.shape[1:3]), tuple(features.shape[1:3])
    own = next((layer for layer in model.layers if layer.name == CELLS_NAME), None)
    if any(s is None or g is None or s % g for s, g in zip(size, grid)):
        raise ValueError(f"localisation loss: the {size[0]}x{size[1]} input is not a whole number of "
                         f"{layer_name!r} cells ({grid[0]}x{grid[1]}); use an image size that is a multiple of 32")
    # head "max_cell" has its cells already (they decide); otherwise a 1x1 convolution of its own
    cells = own.output if own is not None else keras.layers.Conv2D(1, 1, dtype="float32", name=CELLS_NAME)(features)
    truth = keras.Input(model.input.shape[1:3] + (1,), dtype="float32", name="tumour_mask")
    probability = CellSupervision(weight, name="cell_supervision")(model.output, cells, truth)
    return keras.Model([model.input, truth], probability, name=f"{model.name}_localising")
