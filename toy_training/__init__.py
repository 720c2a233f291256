"""How the embedded toy suite (`interp.toy`) was trained: data, tokenizer, recipe, measurements.

Not installed with the package; run from the repository root: `python -m toy_training.train`.
"""
