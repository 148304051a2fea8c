"""Models shipped inside osae: `stdlib-neox/`, the embedded default (see its README.md model card)."""
