"""Errors that more than one layer raises (the bottom of fdfo_core: imports nothing of it).

`ConfigError` lives here rather than in `config` so that the layers below the configuration
(`flow.image_sizes` raises `ImageSizeError`, a ConfigError) can raise it without importing `config`.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid; the message names it and says what is allowed."""
