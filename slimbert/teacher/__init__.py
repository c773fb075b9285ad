"""Teachers: resolving a pretrained source, and reading its feature maps and attention."""
