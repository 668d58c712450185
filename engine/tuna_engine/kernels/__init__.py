"""Hand-written kernels, each with its PyTorch reference beside it (decode_attn: one-token attention over the
static KV cache of decode.py)."""
