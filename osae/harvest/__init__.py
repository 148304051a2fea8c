"""Harvest: run a Hugging Face causal LM and write hooked activations to an activation store."""

from osae.harvest.config import HarvestConfig
from osae.harvest.runner import harvest

__all__ = ["HarvestConfig", "harvest"]
