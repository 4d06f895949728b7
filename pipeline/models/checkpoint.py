"""Resumable training: a checkpoint at the end of every epoch, and a rerun that continues from it.

``EpochCheckpoint`` (a keras Callback, the last of a ``TrainingRun``'s) writes, after each completed epoch,
``.checkpoints/<live dir>/last/`` atomically (a whole new folder replaces the old: a kill at any moment leaves
the previous epoch's checkpoint or this one, never a mix):

- ``variables.npz``: every model variable (weights, BatchNormalization statistics, seed-generator states);
- ``optimizer.npz``: the optimizer's variables (iterations, moments, learning rate);
- ``best.npz``: the best epoch's weights when early stopping keeps them;
- ``average.npz``: the running mean of the last epochs' weights when the run averages them (``WeightAverage``);
- ``live/``: the run's dvclive folder so far (DVC deletes a stage's outputs before rerunning it; the
  resumed run puts it back, ``restore_live``, and appends to its curves);
- ``state.json``: the epochs done and the phase (``fit`` call) they belong to, the schedule's state (poly
  base rate, or ReduceLROnPlateau's wait / best / cooldown), ``BestWeights``' state, the history, the img/s of
  each epoch and the dvclive step; and ``binding``, a digest of the params and the stage's input files.

A rerun of the stage (``python -m pipeline <stage>``, ``dvc repro``, ``dvc exp run``) finds it, checks the
binding (another params file or other input data: one log line, the checkpoint is removed and training
starts fresh), logs ``resuming from epoch k of N`` and continues at epoch k with everything above restored;
batches and augmentation are seeded by (seed, epoch, batch), so the epochs after k see what they would have
seen. With the backend's deterministic ops (``train.deterministic``, on the CPU) the final weights equal an
uninterrupted run's. ``TrainingRun.finish`` removes the checkpoint. ``.checkpoints/`` is outside every
stage's DVC outputs (git- and dvc-ignored), so DVC neither caches nor deletes it.

With cross-validation (``split.folds`` > 1) a stage trains its fold models one after the other. Each
finished fold model is kept too (``keep_fold``: its model, sidecar and dvclive files, under
``.checkpoints/finished/``, with the binding), so a rerun after an interruption in fold f restores folds
0..f-1 (``restore_fold``; "fold 0 of 5 finished before the interruption: restored") and resumes fold f from
its last epoch. The stage removes them when every fold is done (``remove_folds``).

The binding is set by ``python -m pipeline`` for the stage it runs (``bind``); without it (a TrainingRun
used from Python) nothing is checkpointed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pipeline.writing import atomic_dir

log = logging.getLogger(__name__)

CHECKPOINTS = Path(".checkpoints")
_binding: dict[str, str] = {}  # set by ``bind`` for the stage this process runs


def bind(stage: str, params: Any, reads: Iterable[str | Path]) -> str:
    """Bind this process's checkpoints to ``stage``, its params (a dataclass), the pipeline's code and the
    files it reads: a digest of the params, of every ``pipeline/**/*.py`` file's content (a fix in the code
    starts training afresh, as DVC reruns the stage) and of each input file's path, size and modification
    time (folders walked)."""
    import dataclasses

    digest = hashlib.sha256(stage.encode())
    for source in sorted(Path(__file__).resolve().parents[1].rglob("*.py")):  # the pipeline package
        digest.update(source.read_bytes())
    digest.update(json.dumps(dataclasses.asdict(params), sort_keys=True, default=str).encode())
    for read in reads:
        root = Path(read)
        paths = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in paths:
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    _binding.clear()
    _binding["digest"] = digest.hexdigest()
    return _binding["digest"]


def _mirror(live_dir: str | Path) -> Path:
    """``.checkpoints/<live dir>`` (an absolute live dir without its anchor)."""
    live_dir = Path(live_dir)
    return CHECKPOINTS / (live_dir.relative_to(live_dir.anchor) if live_dir.is_absolute() else live_dir)


def folder_for(live_dir: str | Path) -> Path | None:
    """Where the run logging to ``live_dir`` keeps its checkpoint; None when no stage is bound."""
    if not _binding:
        return None
    return _mirror(live_dir) / "last"  # not the live dir itself: fold 0's would hold the later folds'


class EpochCheckpoint(keras.callbacks.Callback):
    """Save ``run``'s state (a TrainingRun) into ``folder`` at the end of every epoch."""

    def __init__(self, run: Any, folder: Path, phase: int):
        super().__init__()
        self.run, self.folder, self.phase = run, folder, phase

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        run = self.run
        state = {"binding": _binding.get("digest"), "epoch": epoch + 1, "phase": self.phase,
                 "epochs": run.epochs, "best": _best_state(run.best), "schedule": _schedule_state(run.lr_schedule),
                 "history": _history_so_far(run, self.model, logs),
                 "rates": list(run.timer.rates), "live_step": run.live.step}
        with atomic_dir(self.folder) as tmp:
            np.savez(tmp / "variables.npz", *[keras.ops.convert_to_numpy(v.value) for v in self.model.variables])
            np.savez(tmp / "optimizer.npz",
                     *[keras.ops.convert_to_numpy(v.value) for v in self.model.optimizer.variables])
            if run.best.best_weights is not None:
                np.savez(tmp / "best.npz", *run.best.best_weights)
            if run.average is not None and run.average.mean is not None:
                np.savez(tmp / "average.npz", *run.average.mean)
            shutil.copytree(run.live.dir, tmp / "live", ignore=shutil.ignore_patterns("folds"))  # its curves so far
            (tmp / "state.json").write_text(json.dumps(state))


def _history_so_far(run: Any, model: keras.Model, logs: dict[str, Any] | None) -> dict[str, list[float]]:
    """The history of earlier fit calls, this call's earlier epochs (the model's History, which Keras
    updates after this callback) and this epoch's ``logs``."""
    history = {k: list(v) for k, v in run.history.items()}
    current = getattr(getattr(model, "history", None), "history", None) or {}
    for k, values in current.items():
        history.setdefault(k, []).extend(float(v) for v in values)
    for k, value in (logs or {}).items():
        history.setdefault(k, []).append(float(value))
    return history


def _best_state(best: Any) -> dict[str, Any]:
    return {"best": best.best, "best_epoch": best.best_epoch, "wait": best.wait, "stopped": best.stopped,
            "last": best.last}


def _schedule_state(schedule: Any) -> dict[str, Any]:
    if hasattr(schedule, "base"):  # PolyDecay
        return {"base": schedule.base}
    return {k: getattr(schedule, k) for k in ("wait", "best", "cooldown_counter") if hasattr(schedule, k)}


def read(folder: Path | None) -> dict[str, Any] | None:
    """The checkpoint in ``folder`` when there is one made for this binding; a foreign or unreadable one is
    removed (one log line) and None returned."""
    if folder is None or not (folder / "state.json").is_file():
        return None
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError) as e:
        log.warning("checkpoint %s unreadable (%s): starting fresh", folder, e)
        remove(folder)
        return None
    if state.get("binding") != _binding.get("digest"):
        log.info("checkpoint %s was made with other params or input data: starting fresh", folder)
        remove(folder)
        return None
    return state


def restore_live(folder: Path, live_dir: str | Path) -> None:
    """Put the checkpoint's dvclive files back into ``live_dir`` (what a stage rerun by DVC lost)."""
    if (folder / "live").is_dir():
        shutil.copytree(folder / "live", Path(live_dir), dirs_exist_ok=True)


def restore(run: Any, model: keras.Model, folder: Path, state: dict[str, Any]) -> None:
    """Put the checkpoint's state into ``run`` and ``model`` (compiled as it was when the checkpoint was
    made: the phase it was made in), its optimizer included."""
    model.optimizer.build(model.trainable_variables)
    for variables, name in ((model.variables, "variables.npz"), (model.optimizer.variables, "optimizer.npz")):
        for variable, value in zip(variables, _arrays(folder / name), strict=True):
            variable.assign(value)
    if hasattr(run.lr_schedule, "base"):  # PolyDecay: this optimizer's base rate, not its decayed one
        run.lr_schedule._optimizer = model.optimizer
        run.lr_schedule.base = state["schedule"]["base"]
    for key, value in state["schedule"].items():
        if key != "base":
            setattr(run.lr_schedule, key, value)
    for key, value in state["best"].items():
        setattr(run.best, key, value)
    if (folder / "best.npz").is_file():
        run.best.best_weights = _arrays(folder / "best.npz")
    run.best.set_model(model)
    if run.average is not None:
        if (folder / "average.npz").is_file():
            run.average.mean = _arrays(folder / "average.npz")
            run.average.count = run.average.counted(state["epoch"])
        run.average.set_model(model)  # a rerun after the last epoch calls no fit to set it, and finish() applies it
    run.history = {k: list(v) for k, v in state["history"].items()}
    run.timer.rates = list(state["rates"])
    run.epochs_done = state["epoch"]
    log.info("resuming from epoch %d of %s (checkpoint %s)", state["epoch"], run.epochs or "?", folder)


def _arrays(path: Path) -> list[np.ndarray]:
    """The arrays ``np.savez(path, *arrays)`` wrote, in order."""
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def data_epoch(epochs_done: int, phase: int, phase_over: bool) -> int:
    """The epoch count a ``SliceBatches`` (``keras.utils.PyDataset``) had in the uninterrupted run, to set
    before resuming ``fit`` in ``phase`` (0-based) after ``epochs_done`` epochs. Keras calls its
    ``on_epoch_end`` after every epoch, and once more when each phase's ``fit`` has read its first batches
    (TensorFlow, to learn the data's shapes): during epoch e of phase p it counts e + p + 1. The resumed ``fit`` adds that build's one
    itself; a phase already over had all of them."""
    return epochs_done + phase + (1 if phase_over else 0)


def remove(folder: Path | None) -> None:
    """Remove a checkpoint folder (and its parents under CHECKPOINTS when they are left empty)."""
    if folder is None:
        return
    shutil.rmtree(folder, ignore_errors=True)
    parent = folder.parent
    while parent != CHECKPOINTS.parent and parent.is_dir() and not any(parent.iterdir()):
        os.rmdir(parent)
        parent = parent.parent


def _finished_folder(stage_dir: Path) -> Path | None:
    """``.checkpoints/finished/<stage's live dir>``: where the finished fold models of a stage are kept."""
    return None if not _binding else CHECKPOINTS / "finished" / _mirror(stage_dir).relative_to(CHECKPOINTS)


def keep_fold(stage_dir: Path, fold: int, outputs: Iterable[Path]) -> None:
    """Keep fold model ``fold``'s ``outputs`` (relative files and folders: the model, its sidecar, its dvclive
    files), atomically, bound like an epoch checkpoint; nothing without a binding."""
    root = _finished_folder(stage_dir)
    if root is None:
        return
    outputs = list(outputs)
    if any(output.is_absolute() for output in outputs):
        raise ValueError(f"fold outputs must be relative to the stage's folder: {outputs}")
    with atomic_dir(root / f"fold_{fold}") as tmp:
        for output in outputs:
            if output.is_dir():
                shutil.copytree(output, tmp / "files" / output, ignore=shutil.ignore_patterns("folds"))
            else:
                (tmp / "files" / output.parent).mkdir(parents=True, exist_ok=True)
                shutil.copy2(output, tmp / "files" / output)
        (tmp / "state.json").write_text(json.dumps({"binding": _binding["digest"], "fold": fold}))


def restore_fold(stage_dir: Path, fold: int, folds: int) -> bool:
    """Put back fold model ``fold``'s outputs kept by ``keep_fold`` in this binding (True), or False: none
    kept, or kept with other params or input data (removed)."""
    root = _finished_folder(stage_dir)
    folder = None if root is None else root / f"fold_{fold}"
    if folder is None or not (folder / "state.json").is_file():
        return False
    try:
        binding = json.loads((folder / "state.json").read_text()).get("binding")
    except (OSError, ValueError):
        binding = None
    if binding != _binding["digest"]:
        log.info("finished fold %d in %s was trained with other params, code or input data (or is unreadable): "
                 "training it again",
                 fold, folder)
        remove(folder)
        return False
    shutil.copytree(folder / "files", Path("."), dirs_exist_ok=True)
    log.info("fold %d of %d finished before the interruption: restored (%s)", fold, folds, folder)
    return True


def remove_folds(stage_dir: Path) -> None:
    """Remove the stage's kept fold models, once every fold is done."""
    remove(_finished_folder(stage_dir))
