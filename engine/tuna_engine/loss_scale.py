"""Dynamic loss scaling for float16 training (the rule of torch.amp.GradScaler, Micikevicius et al. 2018 §3.2).

fp16 has 5 exponent bits: activation gradients below ~6e-8 flush to zero. The loss is multiplied by `scale`
before backward so they stay representable; the gradients are divided by it again before clipping and the
optimizer step. When a gradient overflowed (inf/nan gradient norm) the step is skipped — no parameter or
optimizer-state update — and the scale halves; after `growth_interval` good steps in a row it doubles.
The state (scale, good steps in a row, skipped steps) lives in trainer_state.json, so a resumed run continues
with exactly the scale the uninterrupted one would have had.

bf16 and fp32 need none of this (8 exponent bits): `for_dtype` returns None for them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .errors import EngineError

INIT_SCALE = 2.0**16  # torch.amp.GradScaler's defaults
GROWTH_INTERVAL = 2000
MIN_SCALE = 2.0**-24  # below this even the smallest fp16 gradient is lost: the model itself is broken


@dataclass
class LossScaler:
    scale: float = INIT_SCALE
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = GROWTH_INTERVAL
    good_steps: int = 0  # finite steps since the last change of scale
    skipped_steps: int = 0  # over the whole run

    @torch.no_grad()
    def unscale_(self, params: Iterable[torch.Tensor]) -> None:
        """Divide the gradients by the scale, in place (before clipping: the norm is the true one)."""
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, 1.0 / self.scale)

    def update(self, grads_finite: bool, step: int) -> bool:
        """After unscaling: True when the optimizer may step. An overflow skips the step and halves the scale;
        `growth_interval` finite steps in a row double it."""
        if not grads_finite:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            self.skipped_steps += 1
            if self.scale < MIN_SCALE:
                raise EngineError(
                    "NAN_LOSS",
                    f"float16 gradients are inf/nan at step {step} even at loss scale {self.scale:.3g}",
                    hint='train in model.dtype "bfloat16" (no loss scaling needed) or lower train.learning_rate',
                    step=step,
                )
            return False
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0
        return True

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LossScaler:
        return cls(**state)


def for_dtype(dtype: str, state: dict[str, Any] | None = None) -> LossScaler | None:
    """A scaler for float16 models (restored from a checkpoint's trainer state when given), else None."""
    if dtype != "float16":
        return None
    return (
        LossScaler.from_state(state)
        if state
        else LossScaler(scale=INIT_SCALE, growth_interval=GROWTH_INTERVAL)
    )
