"""vidprop: video object mask propagation with diffusion features (DIFT)."""

__version__ = "0.1.0"
