"""Gradients of a classifier's score: the one module that knows which Keras backend computes them.

Everything else (Grad-CAM, integrated gradients) calls the functions below and gets NumPy back:

- :func:`output_and_layer_grad` — activations A of a named layer and d score_i / d A_i, per sample.
  The gradient only runs from the output back to that layer: the model is cut at the layer into a
  ``forward`` part (image -> A, plus any tensor the rest of the graph still needs from before the cut,
  e.g. a skip connection) that runs in inference mode without a tape, and a ``head`` (A, ... -> output)
  that is differentiated. For the classifier the head is GAP -> Dropout -> Dense, so a Grad-CAM costs
  about one forward pass.
- :func:`score_and_input_grad` / :func:`input_grad` — d score_i / d x_i for integrated gradients.

The score of sample i is the model output ``out[i, index]`` (the sigmoid probability for the
classifier), or with ``target="logit"`` the pre-activation of the final sigmoid/softmax layer. Samples
are independent in inference mode, so the gradient of the batch sum is the per-sample gradient.

Backends: "tensorflow" (``tf.GradientTape`` in a ``tf.function``), "jax" (``jax.value_and_grad`` over
``stateless_call`` in a ``jax.jit``) and "torch" (``torch.autograd.grad``, eager). Built functions are
cached per (model, layer, target, mode) and die with the model.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import keras
import numpy as np

log = logging.getLogger(__name__)

Target = Literal["auto", "probability", "logit"]
Mode = Literal["auto", "split", "full"]

_SQUASHING = {"sigmoid", "softmax"}
_CACHE: weakref.WeakKeyDictionary[keras.Model, dict[tuple, Callable[[np.ndarray], tuple]]] = weakref.WeakKeyDictionary()


# ------------------------------------------------------------------------------------------- public API


def output_and_layer_grad(model: keras.Model, layer_name: str, images: np.ndarray, *, target: Target = "probability",
                          index: int = 0, mode: Mode = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Activations of ``layer_name`` and the gradient of each sample's score with respect to them.

    images: float32 [B, H, W, C] as the model takes them (uint8 range for the classifier).
    target: "probability" (the model output), "logit" (pre-activation of a final sigmoid/softmax) or "auto"
    (logit when the output layer has one, else probability). index: output column scored.
    mode: "split" cuts the model at the layer and differentiates only the part after it; "full" records the
    whole forward pass on a tape (TensorFlow only; a reference for tests); "auto" is "split", falling back
    to "full" on TensorFlow should Keras fail to build the cut sub-models.
    Returns (activations float32 [B, h, w, k], grads float32 [B, h, w, k], scores float32 [B]).
    """
    if mode not in ("auto", "split", "full"):
        raise ValueError(f"mode must be 'auto', 'split' or 'full'; got {mode!r}")
    x = _as_batch(images)
    use_logit = _resolve_target(model, target)
    key = ("layer", keras.backend.backend(), layer_name, use_logit, index, mode)
    fn = _cached(model, key, lambda: _build_layer_grad(model, layer_name, use_logit, index, mode))
    acts, grads, scores = fn(x)
    return _np(acts), _np(grads), _np(scores)


def score_and_input_grad(model: keras.Model, images: np.ndarray, *, target: Target = "probability",
                         index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's score and its gradient with respect to the input.

    images: float32 [B, H, W, C]. Returns (scores float32 [B], grads float32 [B, H, W, C]).
    """
    x = _as_batch(images)
    use_logit = _resolve_target(model, target)
    key = ("input", keras.backend.backend(), use_logit, index)
    fn = _cached(model, key, lambda: _build_input_grad(model, use_logit, index))
    scores, grads = fn(x)
    return _np(scores), _np(grads)


def input_grad(model: keras.Model, images: np.ndarray, *, target: Target = "probability",
               index: int = 0) -> np.ndarray:
    """Gradient of each sample's score with respect to the input: float32 [B, H, W, C]."""
    return score_and_input_grad(model, images, target=target, index=index)[1]


def clear_cache(model: keras.Model | None = None) -> None:
    """Forget compiled gradient functions (of one model, or all), e.g. after changing a model's layers."""
    if model is None:
        _CACHE.clear()
    else:
        _CACHE.pop(model, None)


# ------------------------------------------------------------------------------------ cutting the graph


class _CutError(ValueError):
    """Keras could not build the two halves of a cut model."""


@dataclass(frozen=True)
class _Cut:
    """The model cut at a layer: ``forward`` maps the image to [A, *carried]; ``head`` maps them to the output.

    ``carried`` are tensors from before the cut that the graph after it still reads (none for a chain).
    """

    forward: keras.Model
    head: keras.Model
    n_carried: int

    def head_input(self, acts: Any, carried: list[Any]) -> Any:
        """What ``head`` takes: the activation alone, or [activation, *carried]."""
        return [acts, *carried] if self.n_carried else acts


def _node_inputs(tensor: Any) -> list[Any]:
    """The symbolic tensors that the operation producing ``tensor`` reads (empty for a model input)."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return []
    node = history.operation._inbound_nodes[history.node_index]
    return [] if node.is_input else list(node.input_tensors)


def _cut_model(model: keras.Model, activation: Any) -> _Cut:
    """Cut a functional model at the symbolic tensor ``activation`` (see :class:`_Cut`)."""
    outputs = list(model.outputs)
    depends: dict[int, bool] = {id(activation): True}  # id(tensor) -> does it depend on the activation?
    stack = list(outputs)
    while stack:  # iterative post-order: a tensor is decided once all its inputs are
        t = stack[-1]
        if id(t) in depends:
            stack.pop()
            continue
        pending = [u for u in _node_inputs(t) if id(u) not in depends]
        if pending:
            stack.extend(pending)
        else:
            depends[id(t)] = any(depends[id(u)] for u in _node_inputs(t))
            stack.pop()
    if not all(depends[id(o)] for o in outputs):
        raise ValueError("the model output does not depend on the chosen layer")
    try:
        return _split_at(model, activation, depends)
    except ValueError as e:  # Keras refused the sub-models
        raise _CutError(str(e).splitlines()[0] if str(e) else type(e).__name__) from e


def _split_at(model: keras.Model, activation: Any, depends: dict[int, bool]) -> _Cut:
    """The two sub-models of :func:`_cut_model`, given which tensors depend on the activation."""
    outputs = list(model.outputs)
    carried: list[Any] = []
    seen = {id(activation)}
    stack = [o for o in outputs if o is not activation]
    while stack:  # walk back through the part after the cut; collect what it reads from before the cut
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        for u in _node_inputs(t):
            if depends[id(u)]:
                stack.append(u)
            elif id(u) not in {id(c) for c in carried}:
                carried.append(u)
    forward = keras.Model(_model_input(model), [activation, *carried], name=f"{model.name}_to_cut")
    head = keras.Model([activation, *carried] if carried else activation, outputs[0], name=f"{model.name}_from_cut")
    return _Cut(forward=forward, head=head, n_carried=len(carried))


def _model_input(model: keras.Model) -> Any:
    """The model's input structure: one tensor for a single-input model (no structure warnings), else the list."""
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def _output_layer(model: keras.Model) -> keras.Layer:
    return model.outputs[0]._keras_history.operation


def _has_squashing_output(model: keras.Model) -> bool:
    activation = getattr(_output_layer(model), "activation", None)
    return getattr(activation, "__name__", None) in _SQUASHING


def _resolve_target(model: keras.Model, target: Target) -> bool:
    """True when the score is the logit (pre-activation of the final sigmoid/softmax)."""
    if target not in ("auto", "probability", "logit"):
        raise ValueError(f"target must be 'auto', 'probability' or 'logit'; got {target!r}")
    if target == "probability":
        return False
    squashing = _has_squashing_output(model) if getattr(model, "outputs", None) else False
    if target == "logit" and not squashing:
        raise ValueError("target='logit' needs a model whose output layer has a sigmoid or softmax activation")
    return squashing


@contextlib.contextmanager
def _linear_output(layer: keras.Layer | None) -> Iterator[None]:
    """While tracing, run ``layer`` without its activation (logit instead of probability)."""
    if layer is None:
        yield
        return
    saved = layer.activation
    layer.activation = keras.activations.linear
    try:
        yield
    finally:
        layer.activation = saved


def _score(output: Any, index: int) -> Any:
    """Column ``index`` of the output, [B]."""
    flat = keras.ops.reshape(output, (keras.ops.shape(output)[0], -1))
    return flat[:, index]


# ------------------------------------------------------------------------------------ building per backend


def _build_layer_grad(model: keras.Model, layer_name: str, use_logit: bool, index: int,
                      mode: Mode) -> Callable[[np.ndarray], tuple]:
    if not getattr(model, "outputs", None):
        raise ValueError("layer gradients need a functional (or built Sequential) model")
    if len(model.outputs) != 1:
        raise ValueError(f"expected a single-output model; got {len(model.outputs)} outputs")
    try:
        layer = model.get_layer(layer_name)
    except ValueError as e:
        names = ", ".join(layer.name for layer in model.layers[-8:])
        raise ValueError(f"no layer {layer_name!r} at the top level of model {model.name!r} (a nested sub-model's "
                         f"layers are not reachable; last layers: {names})") from e
    final = _output_layer(model) if use_logit else None
    backend = keras.backend.backend()
    if mode == "full":
        if backend != "tensorflow":
            raise NotImplementedError("mode='full' (whole-graph tape) exists for the TensorFlow backend only")
        full = keras.Model(_model_input(model), [layer.output, model.outputs[0]], name=f"{model.name}_with_{layer_name}")
        return _tf_full_layer_grad(full, final, index)
    try:
        cut = _cut_model(model, layer.output)
    except _CutError as e:
        if backend != "tensorflow" or mode == "split":
            raise
        log.warning("cannot cut %s at %s (%s); using a whole-graph tape", model.name, layer_name, e)
        return _build_layer_grad(model, layer_name, final is not None, index, "full")
    log.debug("cut %s at %s: head of %d layers, %d carried tensors", model.name, layer_name,
              len(cut.head.layers), cut.n_carried)
    if backend == "tensorflow":
        return _tf_split_layer_grad(cut, final, index)
    if backend == "jax":
        return _jax_split_layer_grad(cut, final, index)
    if backend == "torch":
        return _torch_split_layer_grad(cut, final, index)
    raise NotImplementedError(_unsupported(backend))


def _build_input_grad(model: keras.Model, use_logit: bool, index: int) -> Callable[[np.ndarray], tuple]:
    final = _output_layer(model) if use_logit else None
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tf_input_grad(weakref.ref(model), final, index)
    if backend == "jax":
        return _jax_input_grad(weakref.ref(model), final, index)
    if backend == "torch":
        return _torch_input_grad(weakref.ref(model), final, index)
    raise NotImplementedError(_unsupported(backend))


def _unsupported(backend: str) -> str:
    return (f"gradients are implemented for the 'tensorflow', 'jax' and 'torch' Keras backends, not {backend!r}; "
            "set KERAS_BACKEND to one of them")


# TensorFlow ---------------------------------------------------------------------------------------------


def _tf_split_layer_grad(cut: _Cut, final: keras.Layer | None, index: int) -> Callable[[np.ndarray], tuple]:
    import tensorflow as tf

    @tf.function(reduce_retracing=True, autograph=False)
    def fn(x):
        acts, *carried = _as_list(cut.forward(x, training=False))
        with tf.GradientTape() as tape:
            tape.watch(acts)
            with _linear_output(final):
                out = cut.head(cut.head_input(acts, carried), training=False)
            scores = _score(out, index)
            total = tf.reduce_sum(scores)
        return acts, tape.gradient(total, acts), scores

    return fn


def _tf_full_layer_grad(full: keras.Model, final: keras.Layer | None, index: int) -> Callable[[np.ndarray], tuple]:
    import tensorflow as tf

    @tf.function(reduce_retracing=True, autograph=False)
    def fn(x):
        with tf.GradientTape() as tape:
            with _linear_output(final):
                acts, out = full(x, training=False)
            scores = _score(out, index)
            total = tf.reduce_sum(scores)
        return acts, tape.gradient(total, acts), scores

    return fn


def _tf_input_grad(model_ref: weakref.ref, final: keras.Layer | None, index: int) -> Callable[[np.ndarray], tuple]:
    import tensorflow as tf

    @tf.function(reduce_retracing=True, autograph=False)
    def fn(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            with _linear_output(final):
                out = model_ref()(x, training=False)
            scores = _score(out, index)
            total = tf.reduce_sum(scores)
        return scores, tape.gradient(total, x)

    return lambda x: fn(tf.convert_to_tensor(x))


# JAX ----------------------------------------------------------------------------------------------------


def _state(model: keras.Model) -> tuple[list[Any], list[Any]]:
    return [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]


def _jax_split_layer_grad(cut: _Cut, final: keras.Layer | None, index: int) -> Callable[[np.ndarray], tuple]:
    import jax
    import jax.numpy as jnp

    def head_total(acts, carried, trainable, non_trainable):
        with _linear_output(final):
            out, _ = cut.head.stateless_call(trainable, non_trainable, cut.head_input(acts, carried), training=False)
        scores = _score(out, index)
        return jnp.sum(scores), scores

    @jax.jit
    def fn(forward_state, head_state, x):
        feats, _ = cut.forward.stateless_call(*forward_state, x, training=False)
        acts, *carried = _as_list(feats)
        (_, scores), grads = jax.value_and_grad(head_total, has_aux=True)(acts, carried, *head_state)
        return acts, grads, scores

    return lambda x: fn(_state(cut.forward), _state(cut.head), x)


def _jax_input_grad(model_ref: weakref.ref, final: keras.Layer | None, index: int) -> Callable[[np.ndarray], tuple]:
    import jax
    import jax.numpy as jnp

    def total(x, trainable, non_trainable):
        with _linear_output(final):
            out, _ = model_ref().stateless_call(trainable, non_trainable, x, training=False)
        scores = _score(out, index)
        return jnp.sum(scores), scores

    @jax.jit
    def fn(state, x):
        (_, scores), grads = jax.value_and_grad(total, has_aux=True)(x, *state)
        return scores, grads

    return lambda x: fn(_state(model_ref()), x)


# PyTorch ------------------------------------------------------------------------------------------------


def _torch_split_layer_grad(cut: _Cut, final: keras.Layer | None, index: int) -> Callable[[np.ndarray], tuple]:
    import torch

    def fn(x):
        with torch.no_grad():
            acts, *carried = _as_list(cut.forward(x, training=False))
        acts = acts.detach().requires_grad_(True)
        with torch.enable_grad(), _linear_output(final):
            scores = _score(cut.head(cut.head_input(acts, carried), training=False), index)
            (grads,) = torch.autograd.grad(scores.sum(), acts)
        return acts.detach(), grads, scores.detach()

    return fn


def _torch_input_grad(model_ref: weakref.ref, final: keras.Layer | None, index: int) -> Callable[[np.ndarray], tuple]:
    import torch

    def fn(x):
        x = keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
        with torch.enable_grad(), _linear_output(final):
            scores = _score(model_ref()(x, training=False), index)
            (grads,) = torch.autograd.grad(scores.sum(), x)
        return scores.detach(), grads

    return fn


# ------------------------------------------------------------------------------------------------ helpers


def _cached(model: keras.Model, key: tuple, build: Callable[[], Callable]) -> Callable:
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        per_model[key] = build()
    return per_model[key]


def _as_batch(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"expected images [B, H, W, C]; got shape {x.shape}")
    return x


def _as_list(value: Any) -> list[Any]:
    """A functional model built with a one-element output list may hand back the bare tensor."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _np(value: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float32)


__all__ = ["clear_cache", "input_grad", "output_and_layer_grad", "score_and_input_grad"]
