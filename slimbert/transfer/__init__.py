"""Knowledge transfer: losses as pure functions of tensors, and the strategies that schedule them."""
