"""Which image sizes a model can make, and a clear error with the nearest sizes that work.

A flow transformer sees the image as a grid of latent patches: the VAE downscales by f (8 for
SD3 and Flux) and the transformer groups p x p latents into one token (p = 2 for SD3's patch
embedding and for Flux's 2x2 latent packing), so height and width must be multiples of f * p
and at least one patch. SD3-style models also store a fixed table of position embeddings
(`pos_embed_max_size` patches per side), which caps the size. Without this check a wrong size
ends deep inside the model in a shape mismatch, a convolution error or a diffusers ValueError.

Backends describe their rule with an `image_size_rule()` method returning a `SizeRule`;
`check_backend_size` applies it (and does nothing for a backend without one).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


class ImageSizeError(ConfigError):
    """An image size the model cannot make; the message lists the nearest sizes that work."""


@dataclass(frozen=True)
class SizeRule:
    """Heights and widths in pixels: multiples of `multiple`, from `minimum` to `maximum` (None: no cap)."""

    multiple: int
    minimum: int
    maximum: int | None = None
    why: str = ""  # what the multiple comes from, in the user's terms

    def allows(self, size: int) -> bool:
        return size % self.multiple == 0 and size >= self.minimum and (self.maximum is None or size <= self.maximum)

    def nearest(self, size: int) -> list[int]:
        """The valid sizes next to `size` (one or two; the closer first)."""
        lo = max(self.minimum, (size // self.multiple) * self.multiple)
        hi = max(self.minimum, -(-size // self.multiple) * self.multiple)
        if self.maximum is not None:
            lo, hi = min(lo, self.maximum), min(hi, self.maximum)
        return sorted({lo, hi}, key=lambda s: (abs(s - size), s))

    def describe(self) -> str:
        span = f"from {self.minimum}" + (f" to {self.maximum} px" if self.maximum is not None else " px up")
        return f"multiples of {self.multiple}" + (f" ({self.why})" if self.why else "") + f", {span}"


def nearest_sizes(height: int, width: int, rule: SizeRule, limit: int = 4) -> list[tuple[int, int]]:
    """Valid (height, width) pairs closest to the requested one, closest first."""
    pairs = {(h, w) for h in rule.nearest(height) for w in rule.nearest(width)}
    return sorted(pairs, key=lambda hw: (abs(hw[0] - height) + abs(hw[1] - width), hw))[:limit]


def check_image_size(height: int, width: int, rule: SizeRule, model: str = "this model") -> None:
    """Raise ImageSizeError (a ConfigError) unless `rule` allows both sides."""
    if rule.allows(int(height)) and rule.allows(int(width)):
        return
    options = ", ".join(f"{h}x{w}" for h, w in nearest_sizes(int(height), int(width), rule))
    raise ImageSizeError(
        f"{height}x{width} (height x width) is not a size {model} can make: height and width must be "
        f"{rule.describe()}. Nearest sizes that work: {options}."
    )


def check_backend_size(backend, height: int, width: int) -> None:
    """`check_image_size` with the backend's own rule (`image_size_rule()`), if it has one."""
    rule_fn = getattr(backend, "image_size_rule", None)
    if rule_fn is None:
        return
    family = getattr(backend, "family", None)
    check_image_size(height, width, rule_fn(), model=f"this {family} model" if family else "this model")
