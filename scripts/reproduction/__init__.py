"""The stages of `scripts/reproduce.py`: the toy (toy.py), the language-model comparison (lm.py), stitching
(stitch.py), HybridOrder against its controls (hybrid.py), and the report (report.py, verdicts.py)."""
