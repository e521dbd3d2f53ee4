"""The memory broker's decisions, as pure functions of a snapshot of the pool.

Every worker process leases device memory from the broker before it loads a model. `plan_lease`
answers one request against a `Pool` snapshot with one of four decisions:

- `grant`: it fits in what is free now;
- `evict`: it fits once these idle models are unloaded (least recently used first);
- `wait`: it could fit, but only after a busy worker finishes (busy workers are never evicted);
- `too_big`: it can never fit, even with every other model unloaded.

No I/O and no clock here: `broker_service.py` takes the snapshot, acts on the decision (asks
workers to unload, waits with a timeout) and asks again. The numbers are bytes throughout.
"""
from __future__ import annotations

from dataclasses import dataclass, field

LOADING, LOADED, EVICTING = "loading", "loaded", "evicting"


@dataclass(frozen=True)
class Lease:
    """Memory held for one model of one worker. `loading` between the grant and the worker's report
    of the measured size, `evicting` while the broker waits for the worker to unload it."""
    worker: str
    model: str
    bytes: int
    state: str = LOADED
    last_used: float = 0.0


@dataclass(frozen=True)
class Pool:
    capacity: int                                   # device total (GPU) or VRAM_BUDGET_MB (CPU)
    reserve: int                                    # kept free for activations nobody leased
    leases: tuple[Lease, ...] = ()
    working: dict = field(default_factory=dict)     # worker -> working bytes reserved for its job
    busy: frozenset = frozenset()                   # workers running a job or loading a model
    external: int = 0                               # device memory in use that no lease explains

    @property
    def usable(self) -> int:
        return max(0, self.capacity - self.reserve)

    @property
    def held(self) -> int:
        return sum(lease.bytes for lease in self.leases) + sum(self.working.values())

    @property
    def free(self) -> int:
        return self.usable - self.external - self.held

    def lease_of(self, worker: str, model: str) -> Lease | None:
        for lease in self.leases:
            if lease.worker == worker and lease.model == model:
                return lease
        return None


@dataclass(frozen=True)
class Request:
    """`model` is None for a job's working memory alone (a job starting on models already loaded)."""
    worker: str
    model: str | None
    model_bytes: int
    working_bytes: int = 0

    @property
    def total(self) -> int:
        return self.model_bytes + self.working_bytes


@dataclass(frozen=True)
class Decision:
    action: str                       # "grant" | "evict" | "wait" | "too_big"
    need: int                         # bytes this request adds to what the pool holds
    free: int                         # bytes free now
    usable: int                       # capacity - reserve
    evict: tuple[Lease, ...] = ()
    message: str = ""

    def numbers(self) -> dict:
        return {"need_bytes": self.need, "free_bytes": self.free, "usable_bytes": self.usable,
                "evict": [f"{lease.worker}/{lease.model}" for lease in self.evict]}


def additional_bytes(pool: Pool, request: Request) -> int:
    """What granting the request adds: the model (less a lease it already has) plus any working
    memory beyond what the worker already reserved."""
    existing = pool.lease_of(request.worker, request.model) if request.model else None
    model_delta = max(0, request.model_bytes - (existing.bytes if existing else 0))
    working_delta = max(0, request.working_bytes - pool.working.get(request.worker, 0))
    return model_delta + working_delta


def eviction_candidates(pool: Pool, request: Request) -> list[Lease]:
    """Loaded models that may be unloaded for this request, least recently used first. Models of a
    busy worker are never candidates, except, for a model request, the requester's own other models:
    the requester knows which of them its job uses and refuses those (409), so asking it is safe. A
    working-memory request comes from a job about to run on the requester's loaded models: those stay."""
    def allowed(lease: Lease) -> bool:
        if lease.worker == request.worker:
            return request.model is not None and lease.model != request.model
        return lease.worker not in pool.busy
    candidates = [lease for lease in pool.leases if lease.state == LOADED and allowed(lease)]
    return sorted(candidates, key=lambda x: (x.last_used, x.worker, x.model))


def plan_lease(pool: Pool, request: Request) -> Decision:
    need = additional_bytes(pool, request)
    free = pool.free
    if request.total > pool.usable:
        return Decision("too_big", need, free, pool.usable, message=(
            f"{request.worker}/{request.model or 'working memory'} needs {request.total} bytes "
            f"(model {request.model_bytes} + working {request.working_bytes}) but the device offers "
            f"{pool.usable} bytes ({pool.capacity} capacity - {pool.reserve} reserve) even with every "
            "other model unloaded"))
    if need <= free:
        return Decision("grant", need, free, pool.usable)
    shortfall = need - free
    chosen: list[Lease] = []
    freed = 0
    for lease in eviction_candidates(pool, request):
        if freed >= shortfall:
            break
        chosen.append(lease)
        freed += lease.bytes
    if freed < shortfall:
        return Decision("wait", need, free, pool.usable, message=(
            f"{request.worker}/{request.model or 'working memory'} needs {need} more bytes, {free} are "
            f"free and idle models hold only {freed}; waiting for busy workers to finish"))
    # The LRU prefix may include models that turn out not to be needed (a small old one before a big
    # one): spare those, most recently used first.
    for lease in sorted(chosen, key=lambda x: (x.last_used, x.worker, x.model), reverse=True):
        if freed - lease.bytes >= shortfall:
            chosen.remove(lease)
            freed -= lease.bytes
    chosen.sort(key=lambda x: (x.last_used, x.worker, x.model))
    return Decision("evict", need, free, pool.usable, evict=tuple(chosen), message=(
        f"{request.worker}/{request.model or 'working memory'} needs {need} bytes, {free} are free: "
        f"unloading {', '.join(f'{lease.worker}/{lease.model} ({lease.bytes})' for lease in chosen)}"))


def pressure(pool: Pool, waiting: int) -> str:
    """A one-word summary for operators: critical while a request waits, else by share of capacity in use."""
    if waiting:
        return "critical"
    if pool.capacity <= 0:
        return "high"
    used = (pool.held + pool.external + pool.reserve) / pool.capacity
    if used >= 0.9:
        return "high"
    if used >= 0.7:
        return "medium"
    return "low"
