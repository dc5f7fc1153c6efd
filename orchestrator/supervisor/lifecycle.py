"""A sidecar's life as a state machine: its state, which may only move forward, and why it ended.

Shared by the real sidecar and the tests' in-memory one, so both keep the same
rules (``policy.TRANSITIONS``).
"""

from __future__ import annotations

from orchestrator import policy
from orchestrator.policy import State, StopReason


class Lifecycle:
    """The state of one sidecar, and the reason it was taken out of service, once it was."""

    def __init__(self) -> None:
        self._state = State.STARTING
        self._out_of_service: tuple[StopReason, str] | None = None

    @property
    def state(self) -> State:
        return self._state

    @property
    def stop_reason(self) -> StopReason | None:
        """Why it was taken out of service, if it was."""
        return None if self._out_of_service is None else self._out_of_service[0]

    @property
    def stop_detail(self) -> str:
        return "" if self._out_of_service is None else self._out_of_service[1]

    def mark_stopping(self, reason: StopReason, detail: str) -> bool:
        """Take the child out of service at once (no new leases); False if it already was."""
        return self._take_out_of_service(State.STOPPING, reason, detail)

    def _take_out_of_service(self, state: State, reason: StopReason, detail: str) -> bool:
        if not policy.can_move(self._state, state):
            return False  # already out of service, or gone
        self._out_of_service = (reason, detail)
        self._move(state)
        return True

    def _move(self, state: State) -> None:
        assert self._state is state or policy.can_move(self._state, state), f"{self._state} -> {state}"
        self._state = state
