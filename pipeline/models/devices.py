"""Data-parallel training over every local accelerator: ``train.devices`` (auto | N).

Keras 3's distribution API on the JAX backend does all of it: ``keras.distribution.DataParallel`` over
``keras.distribution.list_devices()`` replicates the variables on each device, splits every batch along
its first axis, and the compiled train step (XLA/GSPMD) reduces the gradients, the loss and the
BatchNormalization batch statistics over the whole batch, so N devices train the model one device trains,
up to the order of floating-point sums. Nothing here averages gradients.

- ``train.batch_size`` is the global batch: each of N devices gets batch_size / N slices (batch_size must
  be a multiple of N). The learning rate is used as given: same batch, same rate, same training as on one
  device, only faster. To use N devices for a bigger batch instead, multiply batch_size by N and scale
  ``train.lr`` by N (the linear scaling rule, Goyal et al. 2017), a change of recipe you make in params.yaml.
- ``auto``: every local device JAX sees (GPUs, TPUs; on a machine without them, its one CPU), 1 on other
  backends. ``N``: exactly N, and an error when there are fewer or the backend is not JAX.
- Batches split evenly: shuffled training batches are always full (train.batch_size); the validation
  slices, read in order, are cut to a multiple of the device count (at most N - 1 slices left out, logged),
  since a last batch that N devices cannot share evenly cannot be placed on them.
- Several hosts: one process per host, started with the coordinator's address, the process count and
  each process's rank in ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``:
  ``jax.distributed.initialize`` runs before the devices are listed, and ``list_devices()`` then gives
  every host's devices (see the README). Each process then reads its own equal share of the slices
  (every P-th row, ``rows_for_this_process``), the global batch is train.batch_size x P, and Keras
  assembles it from the processes' batches. Written to Keras' and JAX's documented multi-process API, but
  not run on several hosts here.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from pipeline.errors import ParamsError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def use_devices(devices: int | str, batch_size: int) -> int:
    """Train on ``devices`` ("auto" or a count) from here on: sets Keras' distribution when there are
    several; returns how many devices train. ParamsError for a count the backend or machine cannot give,
    or a global ``batch_size`` they cannot split evenly."""
    import keras

    if keras.config.backend() != "jax":
        if devices not in ("auto", 1):
            raise ParamsError(f"train.devices: {devices} needs the JAX backend (KERAS_BACKEND=jax); "
                              f"the {keras.config.backend()} backend trains on one device")
        log.info("training on 1 device (%s backend)", keras.config.backend())
        return 1
    _initialize_hosts()
    import jax

    found = keras.distribution.list_devices()
    count = len(found) if devices == "auto" else int(devices)
    if count > len(found):
        raise ParamsError(f"train.devices: {count}, but JAX sees {len(found)} device(s): {', '.join(found)}")
    local = count // jax.process_count()
    if batch_size % local:
        raise ParamsError(f"train.batch_size {batch_size} cannot be split over {local} devices: make it a "
                          f"multiple of {local} (it is the global batch of one host)")
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=found[:count]) if count > 1 else None)
    log.info("training on %d device%s (%s), %d slices per device per step", count, "s" if count > 1 else "",
             ", ".join(found[:count]), batch_size // local)
    return count


def rows_for_this_process(rows: pd.DataFrame, shuffled: bool) -> pd.DataFrame:
    """The manifest rows this process reads under the current Keras distribution (unchanged without one):
    every P-th row from this process's index when P processes train, the same count in each, and, for rows
    read in order (``shuffled`` False: validation), a multiple of the process's device count, so the last
    batch splits evenly over its devices."""
    import keras

    distribution = keras.distribution.distribution() if keras.config.backend() == "jax" else None
    if distribution is None:
        return rows
    import jax

    processes, index = jax.process_count(), jax.process_index()
    local_devices = distribution.device_mesh.devices.size // processes
    keep = len(rows) // processes
    if not shuffled:
        keep -= keep % local_devices
    share = rows.iloc[index::processes].iloc[:keep].reset_index(drop=True)
    if processes * keep < len(rows):
        log.info("%d of %d %s slices left out: %d process(es) x %d device(s) share them evenly",
                 len(rows) - processes * keep, len(rows), "training" if shuffled else "validation", processes,
                 local_devices)
    return share


def _initialize_hosts() -> None:
    """``jax.distributed.initialize`` from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID when
    more than one process is asked for (once per process)."""
    processes = int(os.environ.get("JAX_NUM_PROCESSES", "1"))
    if processes <= 1:
        return
    import jax

    if jax.distributed.is_initialized():
        return
    jax.distributed.initialize(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"], num_processes=processes,
                               process_id=int(os.environ["JAX_PROCESS_ID"]))
    log.info("process %d of %d (coordinator %s)", jax.process_index(), processes, os.environ["JAX_COORDINATOR_ADDRESS"])
