"""The pool as a router between machines sees it (see fleet.signals): each public name's state here."""

from __future__ import annotations

from orchestrator import admission
from orchestrator.fleet.signals import ModelStatus, NodeStatus, Room
from orchestrator.policy import State
from orchestrator.supervisor.pool import Pool

_ROOM = {admission.Admit: Room.NOW, admission.Evict: Room.EVICT, admission.Wait: Room.WAIT}


def node_status(pool: Pool, kv_usage: float = 0.0) -> NodeStatus:
    """Every configured name with whether it is loaded, loading, or where it could start."""
    models = []
    for route in pool.routes.routes():
        key = pool.routes.key_of(route.name)
        sidecar = pool.get(key)
        state = None if sidecar is None else sidecar.state
        loaded = state is State.READY
        loading = state in (State.STARTING,)
        room = Room.NOW if loaded or loading else _ROOM.get(type(pool.room_for(route.spec())), Room.NEVER)
        models.append(ModelStatus(route.name, loaded, loading, room))
    running = queued = 0
    for sidecar in pool.sidecars():
        serving, waiting = pool.leases(sidecar.key)
        running, queued = running + serving, queued + waiting
    return NodeStatus(pool.draining, tuple(models), running, queued, kv_usage)
