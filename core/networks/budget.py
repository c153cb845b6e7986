"""Will a job on this model fit the worker it would go to? Memory from a ``meta``-device summary, no torch here.

Per arm alive at once: weights, gradients, optimizer state (parameter-sized tensors per parameter: Adam 2, SGD
with momentum 1) and the activations saved for backward by one micro-batch. The activation figure is measured,
not modelled: the inspector runs the forward and loss on ``meta`` tensors and adds up what autograd saves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Workload:
    """What a job does with its model: the inputs of one micro-batch, the training state it keeps."""

    batch: int
    seq_len: int | None = None  # tokens per sample, for token models
    features: int | None = None  # columns per row, for the MLP and CNNs
    classes: int | None = None
    optimizer_states: int = 2  # parameter-sized optimizer tensors per parameter (adam 2, sgdm 1, none 0)
    extra_buffers: int = 0  # further parameter-sized tensors (an explicit accumulation buffer is .grad itself)
    arms: int = 1  # models alive at the same time
    dtype_bytes: int = 4

    def input(self) -> dict:
        return {"batch": self.batch, "seq_len": self.seq_len, "features": self.features, "classes": self.classes}


@dataclass(frozen=True)
class MemoryEstimate:
    n_params: int
    weights: int
    grads: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def estimate(n_params: int, activation_bytes: int, work: Workload) -> MemoryEstimate:
    """``activation_bytes``: what the inspector measured for one micro-batch of ``work`` in float32."""
    per = n_params * work.dtype_bytes
    scale = work.dtype_bytes / 4
    return MemoryEstimate(
        n_params=n_params,
        weights=work.arms * per,
        grads=work.arms * per,
        optimizer=work.arms * per * (work.optimizer_states + work.extra_buffers),
        activations=int(work.arms * activation_bytes * scale),
    )


BUDGET_SETTINGS = {
    "cpu": "GRADLAB_CPU_WORKER_MEMORY_GIB",
    "gpu": "GRADLAB_GPU_WORKER_MEMORY_GIB",
    "auto": "the smaller of GRADLAB_CPU_WORKER_MEMORY_GIB and GRADLAB_GPU_WORKER_MEMORY_GIB",
}
"""The setting that sets what one job may use on a worker of each queue (``core.settings``)."""


def refusal(est: MemoryEstimate, queue: str, capacity: int) -> str | None:
    """Why the job cannot fit a worker of ``queue`` (None when it fits), naming the setting that raises the budget."""
    if est.total <= capacity:
        return None
    gib = 2**30
    return (
        f"about {est.total / gib:.2f} GiB needed (weights {est.weights / gib:.2f}, gradients "
        f"{est.grads / gib:.2f}, optimizer state {est.optimizer / gib:.2f}, activations "
        f"{est.activations / gib:.2f}) for {est.n_params:,} parameters exceeds the {capacity / gib:.2f} GiB "
        f"of a '{queue}' worker; the budget is set by {BUDGET_SETTINGS.get(queue, BUDGET_SETTINGS['auto'])} "
        "(on the API and the workers); a smaller batch or model.dtype bfloat16 needs less"
    )
