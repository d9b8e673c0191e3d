"""The corpus's model families, small enough for CPU: CNN, ResNet, tiny ViT, MLP, U-Net, and a
YOLO-like grid detector on any of the first two. Every net has a ``backbone`` and a ``head`` so the
frozen-backbone fault is one line; the model-side faults live in `apply_fault`.

>>> build("vit", in_channels=3, outputs=8, size=16)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

ACT: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "tanh": nn.Tanh}


def _conv(c_in: int, c_out: int, act: str, norm: bool, stride: int = 1) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, stride, 1)]
    if norm:
        layers.append(nn.BatchNorm2d(c_out))
    return [*layers, ACT[act]()]


class Net(nn.Module):
    """backbone -> head; the head sees a flat feature vector (or a feature map for dense tasks)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def cnn(c_in: int, width: int, depth: int, act: str, norm: bool) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = []
    c = c_in
    for i in range(depth):
        out = width * (2 if i >= depth // 2 else 1)
        layers += _conv(c, out, act, norm, stride=2 if i in (1, 3) else 1)
        c = out
    return nn.Sequential(*layers), c


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, act: str, norm: bool) -> None:
        super().__init__()
        n: type[nn.Module] = nn.BatchNorm2d if norm else nn.Identity
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not norm),
            n(c_out),
            ACT[act](),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=not norm),
            n(c_out),
        )
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride)
        self.act = ACT[act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


def resnet(c_in: int, width: int, depth: int, act: str, norm: bool) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = _conv(c_in, width, act, norm)
    c = width
    for i in range(depth):
        out = width * 2 ** min(i, 2)
        layers.append(Block(c, out, 2 if i in (1, 2) else 1, act, norm))
        c = out
    return nn.Sequential(*layers), c


class ViT(nn.Module):
    """Patches of 4 pixels, a few transformer layers, mean-pooled tokens."""

    def __init__(self, c_in: int, size: int, dim: int, depth: int, dropout: float) -> None:
        super().__init__()
        self.patch = nn.Conv2d(c_in, dim, 4, 4)
        self.pos = nn.Parameter(torch.randn(1, (size // 4) ** 2, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 4, dim * 2, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.norm(self.encoder(tokens)).mean(1)


def mlp(c_in: int, size: int, width: int, depth: int, act: str, norm: bool) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = [nn.Flatten()]
    d = c_in * size * size
    for _ in range(depth):
        layers += [nn.Linear(d, width * 8)]
        if norm:
            layers.append(nn.BatchNorm1d(width * 8))
        layers.append(ACT[act]())
        d = width * 8
    return nn.Sequential(*layers), d


class UNet(nn.Module):
    """Two levels down, two up, skip connections; one logit per pixel."""

    def __init__(self, c_in: int, width: int, act: str, norm: bool) -> None:
        super().__init__()
        w = width
        self.d1 = nn.Sequential(*_conv(c_in, w, act, norm), *_conv(w, w, act, norm))
        self.d2 = nn.Sequential(*_conv(w, 2 * w, act, norm, 2), *_conv(2 * w, 2 * w, act, norm))
        self.d3 = nn.Sequential(*_conv(2 * w, 4 * w, act, norm, 2), *_conv(4 * w, 4 * w, act, norm))
        self.u2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2)
        self.c2 = nn.Sequential(*_conv(4 * w, 2 * w, act, norm))
        self.u1 = nn.ConvTranspose2d(2 * w, w, 2, 2)
        self.c1 = nn.Sequential(*_conv(2 * w, w, act, norm))
        self.head = nn.Conv2d(w, 1, 1)

    @property
    def backbone(self) -> nn.Module:
        return nn.ModuleList([self.d1, self.d2, self.d3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.d1(x)
        b = self.d2(a)
        c = self.d3(b)
        b = self.c2(torch.cat([self.u2(c), b], 1))
        return self.head(self.c1(torch.cat([self.u1(b), a], 1)))


class GridHead(nn.Module):
    """YOLO-like: a feature map pooled to an S x S grid, (4 box + 1 objectness + C classes) per cell."""

    def __init__(self, c: int, grid: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.out = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.ReLU(), nn.Conv2d(c, 5 + num_classes, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.out(self.pool(f))


def build(
    family: str,
    in_channels: int,
    outputs: int,
    *,
    size: int,
    task: str = "classification",
    width: int = 16,
    depth: int = 2,
    act: str = "relu",
    norm: bool = True,
    dropout: float = 0.0,
) -> nn.Module:
    """`family` (cnn | resnet | vit | mlp | unet) for `task`: `outputs` classes, coordinates or, for
    detection, object classes (the grid head adds box and objectness)."""
    if family == "unet":
        return UNet(in_channels, width, act, norm)
    if family == "vit":
        backbone: nn.Module = ViT(in_channels, size, width * 2, depth, dropout)
        c = width * 2
    elif family == "mlp":
        backbone, c = mlp(in_channels, size, width, depth, act, norm)
    elif family in ("cnn", "resnet"):
        backbone, c = (cnn if family == "cnn" else resnet)(in_channels, width, depth, act, norm)
    else:
        raise ValueError(f"unknown model family {family!r}")
    if task == "detection":
        return Net(backbone, GridHead(c, 4, outputs))
    pool: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if family in ("vit", "mlp"):
        pool = []
    elif task == "keypoints":  # coordinates need to know where: keep a 4 x 4 map, not one average
        pool, c = [nn.AdaptiveAvgPool2d(4), nn.Flatten()], c * 16
    drop: list[nn.Module] = [nn.Dropout(dropout)] if dropout else []
    return Net(backbone, nn.Sequential(*pool, *drop, nn.Linear(c, outputs)))


def apply_fault(model: nn.Module, fault: dict[str, Any]) -> nn.Module:
    """Model-side faults: ``dead_bias`` (every hidden bias set very negative: ReLUs die),
    ``init_scale`` (weights multiplied: exploding or vanishing signals), ``frozen_backbone``."""
    with torch.no_grad():
        if "dead_bias" in fault:
            head = {id(p) for p in getattr(model, "head", nn.Identity()).parameters()}
            for m in model.modules():
                bias = getattr(m, "bias", None)
                if isinstance(m, (nn.Conv2d, nn.Linear)) and bias is not None and id(bias) not in head:
                    bias.fill_(fault["dead_bias"])
        if "init_scale" in fault:
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(fault["init_scale"])
    if fault.get("frozen_backbone"):
        for p in model.backbone.parameters():  # type: ignore[union-attr]
            p.requires_grad_(False)
    return model
