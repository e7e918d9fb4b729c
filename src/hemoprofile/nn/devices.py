"""Pick the compute device once, log the choice, and give the matching mixed-precision context.

``auto`` takes CUDA when torch sees a GPU, else the CPU; the same training and inference code runs on
both. Mixed precision: float16 autocast (with a gradient scaler when training) on CUDA; on a CPU,
bfloat16 autocast only where the processor has native bfloat16 matrix units (AMX / AVX512-BF16), where
it is 2-3x faster than float32 for these small convolutional nets, and float32 elsewhere, where
bfloat16 would be emulated and slower.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DeviceChoice:
    """A resolved device: the torch device, the autocast dtype (``None``: full float32) and a description."""

    device: torch.device
    amp_dtype: torch.dtype | None
    description: str

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        """Context manager running the enclosed forward pass in this device's mixed precision (or not at all)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, active only for float16 (bfloat16 has float32's range and needs none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bfloat16 matrix instructions (Linux ``/proc/cpuinfo`` flags)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def pick_device(requested: str = "auto", mixed_precision: bool = True, threads: int | None = None,
                logger: logging.Logger | None = None) -> DeviceChoice:
    """Resolve ``auto``/``cpu``/``cuda`` to a device and its mixed precision, and log the choice.

    Parameters
    ----------
    requested : ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda`` (an error when absent).
    mixed_precision : allow float16 (CUDA) / bfloat16 (CPUs with native support) autocast.
    threads : CPU threads for torch (``None`` leaves torch's setting; the ``HEMOPROFILE_CPU_BF16``
        environment variable set to 0 or 1 forces CPU bfloat16 off or on).

    Raises
    ------
    ValueError for an unknown name, or ``cuda`` requested where torch sees no GPU.

    Example
    -------
    >>> pick_device("cpu", mixed_precision=False).device
    device(type='cpu')
    """
    logger = logger or log
    if requested not in DEVICE_CHOICES:
        raise ValueError(f"device {requested!r} is not one of {DEVICE_CHOICES}")
    cuda = torch.cuda.is_available()
    if requested == "cuda" and not cuda:
        raise ValueError("device 'cuda' requested but torch sees no CUDA GPU (use 'auto' to fall back to the CPU)")
    if threads:
        torch.set_num_threads(int(threads))
    if cuda and requested in ("auto", "cuda"):
        device = torch.device("cuda")
        amp = torch.float16 if mixed_precision else None
        torch.backends.cudnn.benchmark = True
        text = f"cuda ({torch.cuda.get_device_name(0)}), {'float16 autocast' if amp else 'float32'}"
    else:
        device = torch.device("cpu")
        forced = os.environ.get("HEMOPROFILE_CPU_BF16")
        bf16 = cpu_has_bf16() if forced is None else forced == "1"
        amp = torch.bfloat16 if (mixed_precision and bf16) else None
        text = f"cpu ({torch.get_num_threads()} threads), {'bfloat16 autocast' if amp else 'float32'}"
    logger.info("device: %s", text)
    return DeviceChoice(device, amp, text)


def ready_for_inference(model: torch.nn.Module, device: torch.device, channels_last: bool = False) -> torch.nn.Module:
    """``model`` in eval mode on ``device`` (channels-last when asked), converted only where it is not yet.

    ``Module.to`` reassigns every parameter even when nothing changes; skipping it for a model already in
    place lets several threads run the same model's forward passes (block-parallel CPU inference,
    :func:`hemoprofile.io.ordered_map`) without one thread rewriting weights another is reading.
    """
    tensors = [*model.parameters(), *model.buffers()]
    moved = any(t.device.type != device.type for t in tensors)
    laid_out = not channels_last or all(
        t.is_contiguous(memory_format=torch.channels_last) for t in model.parameters() if t.dim() == 4)
    if moved or not laid_out:
        model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    if model.training:
        model.eval()
    return model
