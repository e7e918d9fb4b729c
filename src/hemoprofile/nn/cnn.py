"""A compact ResNet-style CNN for single-cell patches (any number of channels, any patch size).

Cells are small (leukocytes are 10-20 px across at 10x; CURE classified 21x21 px crops), so the network
is a plain pre-pooling ResNet with few, narrow stages rather than an ImageNet backbone: the default
(widths 32-64-128-256, one basic block per stage) has about 1.2 M parameters, trains from scratch on a
CPU in minutes and needs no downloaded weights. The stem stride is chosen from the patch size so that
the last stage always sees a feature map of a few pixels (4-8 px) whatever the input.

A model file is a ``torch.save`` dict with the architecture (:class:`CellNetSpec` as a dict) next to the
weights, so :func:`build_model` rebuilds it without any code outside this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class CellNetSpec:
    """Architecture of a :class:`CellNet`.

    Attributes
    ----------
    in_channels : number of image channels (4 for DAPI/CK/VIM/CD45, 3 for RGB).
    n_classes : number of output logits.
    patch_size : edge of the square input in pixels (used to pick the stem stride when it is ``None``).
    widths : channels of each stage; each stage after the first halves the resolution.
    blocks : basic residual blocks per stage (same length as ``widths``).
    stem_stride : stride of the stem convolution; ``None`` picks 1 for patches under 64 px, 2 otherwise.
    dropout : dropout before the classifier.
    """

    in_channels: int
    n_classes: int
    patch_size: int = 32
    widths: tuple[int, ...] = (32, 64, 128, 256)
    blocks: tuple[int, ...] = (1, 1, 1, 1)
    stem_stride: int | None = None
    dropout: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        if self.in_channels < 1 or self.n_classes < 1:
            raise ValueError(f"in_channels and n_classes must be >= 1, got {self.in_channels}, {self.n_classes}")
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise ValueError(f"widths {self.widths} and blocks {self.blocks} must be non-empty and of equal length")
        if self.patch_size < 8:
            raise ValueError(f"patch_size must be at least 8 px, got {self.patch_size}")

    @property
    def effective_stem_stride(self) -> int:
        """The stem stride actually used (resolves ``None``)."""
        if self.stem_stride is not None:
            return int(self.stem_stride)
        return 1 if self.patch_size < 64 else 2

    def to_dict(self) -> dict:
        """A plain dict (lists, ints) that ``torch.load(weights_only=True)`` and JSON accept."""
        d = asdict(self)
        d["widths"], d["blocks"] = list(self.widths), list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CellNetSpec":
        """Inverse of :meth:`to_dict`; unknown keys are an error, so a model file from another code base fails loudly."""
        return cls(**{**d, "widths": tuple(d["widths"]), "blocks": tuple(d["blocks"])})


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        # zero-init the last BN so each block starts as the identity: trains faster from scratch
        nn.init.zeros_(self.bn2.weight)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class CellNet(nn.Module):
    """Compact ResNet: stem conv, residual stages, global average pooling, linear classifier.

    Input (batch, channel, row, column) float in [0, 1]; output logits (batch, n_classes). Inputs are
    standardised per channel inside the model, ``(x - input_mean) / input_std``, with buffers that
    training sets from the training patches (:meth:`set_input_statistics`) and that are saved with the
    weights, so stored patches need no separate normalisation step. Why: fluorescence patches are mostly
    dark background (channel means of 0.05 are common); unstandardised, the first batch norm's running
    variance starts orders of magnitude too large and an early model predicts one class in eval mode.
    """

    def __init__(self, spec: CellNetSpec):
        super().__init__()
        self.spec = spec
        self.register_buffer("input_mean", torch.full((spec.in_channels,), 0.5))
        self.register_buffer("input_std", torch.ones(spec.in_channels))
        w0 = spec.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(spec.in_channels, w0, 3, spec.effective_stem_stride, 1, bias=False),
            nn.BatchNorm2d(w0),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        in_ch = w0
        for i, (width, n) in enumerate(zip(spec.widths, spec.blocks)):
            for j in range(n):
                layers.append(BasicBlock(in_ch, width, stride=2 if (i > 0 and j == 0) else 1))
                in_ch = width
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(in_ch, spec.n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @torch.no_grad()
    def set_input_statistics(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Set the per-channel input standardisation (std values below 1e-3 are raised to it)."""
        self.input_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.input_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-3))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (batch, widths[-1]) before the classifier."""
        x = (x - self.input_mean[:, None, None]) / self.input_std[:, None, None]
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def build_model(spec: CellNetSpec | dict) -> CellNet:
    """Build a :class:`CellNet` from a spec or its dict form.

    Example
    -------
    >>> net = build_model(CellNetSpec(in_channels=4, n_classes=2, patch_size=32))
    >>> net(torch.zeros(1, 4, 32, 32)).shape
    torch.Size([1, 2])
    """
    if isinstance(spec, dict):
        spec = CellNetSpec.from_dict(spec)
    return CellNet(spec)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class WeightEMA:
    """Exponential moving average of a model's weights (and running BN statistics).

    Evaluating the averaged weights is a cheap, well-known gain for from-scratch training with a short
    schedule: it smooths the last epochs' noise without another pass over the data.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        import copy

        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend ``model``'s current weights into the average (warm-up: early updates weigh more)."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        src = model.state_dict()
        for name, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(src[name].detach(), alpha=1 - d)
            else:
                value.copy_(src[name])


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True)
    fused.weight.copy_(conv.weight * scale[:, None, None, None])
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


@torch.no_grad()
def fuse_batchnorm(model: CellNet) -> CellNet:
    """A copy of ``model`` for inference with every batch norm folded into the convolution before it.

    Same outputs in eval mode (to float rounding) with a third fewer layers to run: inference on a CPU
    is about 1.3x faster. The copy is in eval mode and must not be trained.

    Example
    -------
    >>> net = build_model(CellNetSpec(2, 3, patch_size=16, widths=(4, 8), blocks=(1, 1))).eval()
    >>> x = torch.rand(2, 2, 16, 16)
    >>> bool(torch.allclose(net(x), fuse_batchnorm(net)(x), atol=1e-5))
    True
    """
    import copy

    fused = copy.deepcopy(model).eval()
    fused.stem = nn.Sequential(_fold(fused.stem[0], fused.stem[1]), *list(fused.stem)[2:])
    for block in fused.stages:
        block.conv1, block.bn1 = _fold(block.conv1, block.bn1), nn.Identity()
        block.conv2, block.bn2 = _fold(block.conv2, block.bn2), nn.Identity()
        if isinstance(block.shortcut, nn.Sequential):
            block.shortcut = _fold(block.shortcut[0], block.shortcut[1])
    return fused
