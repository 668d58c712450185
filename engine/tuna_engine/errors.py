"""One error type for everything the engine reports as an `error` event (see protocol.py)."""

from __future__ import annotations


class EngineError(Exception):
    """`code` is stable (TypeScript matches on it); `message` names the file and field; `hint` says what to do."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        hint: str | None = None,
        step: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.step = step
        self.field = field

    def event(self) -> dict[str, object]:
        e: dict[str, object] = {"event": "error", "code": self.code, "message": self.message}
        if self.hint:
            e["hint"] = self.hint
        if self.step is not None:
            e["step"] = self.step
        return e
