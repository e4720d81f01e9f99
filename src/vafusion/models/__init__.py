"""Neural network architectures, one per module (torchvision style)."""
