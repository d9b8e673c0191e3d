"""Models for the reference trainer: a small CNN, a ResNet-style network, or torchvision's by name.

>>> build("cnn", in_channels=1, num_classes=10)          # doctest: +SKIP
>>> build("resnet", in_channels=3, num_classes=6)        # doctest: +SKIP
>>> build("tv:resnet18", in_channels=3, num_classes=6)   # doctest: +SKIP (needs torchvision)

`activation` ("relu", "sigmoid", "tanh", ...) and `depth` exist so the analysis corpus can build
the classic failure cases (deep sigmoid nets, vanishing gradients) from the same code.
"""

from __future__ import annotations

from trainpilot.extras import extra

with extra("train", "trainpilot train"):
    from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def _act(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}: use one of {sorted(ACTIVATIONS)}") from None


class SmallCNN(nn.Module):
    """conv-(act)-conv-(act)-pool ... then a linear head; `depth` extra conv layers for deep variants."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 32,
        depth: int = 2,
        activation: str = "relu",
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(depth):
            out = width * (2 if i >= depth // 2 else 1)
            layers += [nn.Conv2d(channels, out, 3, padding=1)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(_act(activation))
            channels = out
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int, activation: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(channels_out),
            _act(activation),
            nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels_out),
        )
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.skip = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False), nn.BatchNorm2d(channels_out)
            )
        self.act = _act(activation)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.act(self.body(x) + self.skip(x))


class ResNet(nn.Module):
    """A small ResNet: a stem, then stages of two basic blocks, widths doubling as resolution halves."""

    def __init__(
        self, in_channels: int, num_classes: int, width: int = 16, stages: int = 3, activation: str = "relu"
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), _act(activation)
        )
        blocks: list[nn.Module] = []
        channels = width
        for stage in range(stages):
            out = width * 2**stage
            blocks += [
                BasicBlock(channels, out, 1 if stage == 0 else 2, activation),
                BasicBlock(out, out, 1, activation),
            ]
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.blocks(self.stem(x)))


def build(
    name: str,
    in_channels: int,
    num_classes: int,
    *,
    activation: str = "relu",
    depth: int = 2,
    width: int | None = None,
    batch_norm: bool = True,
) -> nn.Module:
    """A model by name: ``cnn``, ``resnet``, or ``tv:<torchvision model>`` when torchvision is installed."""
    if name == "cnn":
        return SmallCNN(in_channels, num_classes, width or 32, depth, activation, batch_norm)
    if name == "resnet":
        return ResNet(in_channels, num_classes, width or 16, activation=activation)
    if name.startswith("tv:"):
        return _torchvision(name.removeprefix("tv:"), in_channels, num_classes)
    raise ValueError(f"unknown model {name!r}: use cnn, resnet or tv:<torchvision name>")


def _torchvision(name: str, in_channels: int, num_classes: int) -> nn.Module:
    with extra("vision", f"model tv:{name}"):
        import torchvision
    model: nn.Module = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    if first.in_channels != in_channels:
        raise ValueError(f"tv:{name} expects {first.in_channels}-channel input; this data has {in_channels}")
    return model
