"""The scientist's reference CNN: the strongly regularised model the ViT is meant to mimic."""
import torch
from torch import nn


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv -> BatchNorm -> ReLU -> 2x2 max-pool -> Dropout2d: halves the image side."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2), nn.Dropout2d(0.25))


class ReferenceCNN(nn.Module):
    """(B, C, S, S) -> (B, 1) logits: two conv blocks (C -> 16 -> 32), then Linear(32*S*S/16 -> 128 -> 1), S % 4 = 0."""

    def __init__(self, *, in_channels: int = 2, image_size: int = 28):
        super().__init__()
        side = image_size // 4
        self.shift_unit = 4  # the total stride of the two max-pools: a shift by 4 moves the map by one cell
        self.features = nn.Sequential(conv_block(in_channels, 16), conv_block(16, 32))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * side * side, 128), nn.ReLU(inplace=True),
                                        nn.Dropout(0.5), nn.Linear(128, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))
