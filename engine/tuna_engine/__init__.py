"""Tuna's tensor engine: model code, LoRA, training, merging. Entry point: `python -m tuna_engine`."""
