"""Synthetic data with known ground truth, for experiments: the OSAE paper's Gaussian/Zipf toy (`toy`).

`osae toy` (its command, in `cli.py`) writes it as an ordinary activation store through `osae.store`.
"""

from osae.synthetic.toy import TOY_HOOK, ToyConfig, write_toy_store

__all__ = ["TOY_HOOK", "ToyConfig", "write_toy_store"]
