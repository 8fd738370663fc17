"""The backend protocol: how the controller asks an ONNX runtime to do tensor work.

Why opaque handles: under WebGPU a latent can stay in GPU memory between steps; the controller
only brings to the host what a view needs (`to_host`). Methods that run graphs are async because
onnxruntime-web is; the native backend simply returns at once.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any, Protocol

TYPECODES = {"float32": "f", "uint8": "B", "int64": "q", "int32": "i"}


@dataclass
class HostTensor:
    """A tensor in host memory: flat array.array plus shape (row-major)."""

    data: array
    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self):
        n = 1
        for d in self.shape:
            n *= d
        if len(self.data) != n:
            raise ValueError(f"tensor data has {len(self.data)} values, shape {self.shape} needs {n}")

    @classmethod
    def of(cls, values, shape, dtype="float32") -> HostTensor:
        return cls(array(TYPECODES[dtype], values), tuple(shape), dtype)


class Backend(Protocol):
    name: str

    async def load(self, name: str, files: list[str]) -> None:
        """Create a session for component `name` from bundle-relative files (model first, then external data)."""

    async def run(self, name: str, feeds: dict[str, Any]) -> dict[str, Any]:
        """Run a loaded component; feeds and results are handles keyed by the graph's input/output names."""

    def from_host(self, tensor: HostTensor) -> Any:
        """Upload a host tensor; returns a handle."""

    async def to_host(self, handle: Any) -> HostTensor:
        """Download a handle's values (the only way tensor data reaches Python)."""

    def release(self, handle: Any) -> None:
        """Free a handle's memory early (GPU buffers); a no-op where the garbage collector suffices."""


class Expr:
    """A lazy linear combination Σ c·tensor of handles, as the schedulers build them.

    Why lazy: a scheduler's update is a chain of linear steps (x0 from the noise, a derivative from
    x0, the next sample from the derivative …). Flattening the chain into one combination lets the
    pipeline run it as a single `lincomb` graph call, and keeps the schedulers synchronous.
    """

    __slots__ = ("terms",)

    def __init__(self, terms):
        self.terms = terms  # list of [coef, handle], handles distinct


class Ops:
    """The `ops` object the schedulers receive; `value` turns an Expr into a real tensor."""

    def __init__(self, backend: Backend, max_terms: int, zero_handle: Any):
        self.backend = backend
        self.max_terms = max_terms
        self.zero = zero_handle
        self.calls = 0

    def lincomb(self, terms) -> Expr:
        acc: dict[int, list] = {}
        for coef, x in terms:
            parts = x.terms if isinstance(x, Expr) else [[1.0, x]]
            for c, h in parts:
                slot = acc.setdefault(id(h), [0.0, h])
                slot[0] += float(coef) * c
        return Expr([t for t in acc.values() if t[0] != 0.0])

    async def value(self, x):
        """Materialize an Expr with as few `lincomb` graph calls as possible."""
        if not isinstance(x, Expr):
            return x
        terms = x.terms
        if len(terms) == 1 and terms[0][0] == 1.0:
            return terms[0][1]
        if not terms:
            raise ValueError("empty linear combination")
        while True:
            chunk, terms = terms[: self.max_terms], terms[self.max_terms :]
            pad = self.max_terms - len(chunk)
            feeds = {f"x{i}": h for i, (_, h) in enumerate(chunk)}
            feeds.update({f"x{len(chunk) + i}": self.zero for i in range(pad)})
            feeds["c"] = self.backend.from_host(HostTensor.of([c for c, _ in chunk] + [0.0] * pad, (self.max_terms,)))
            out = (await self.backend.run("lincomb", feeds))["y"]
            self.calls += 1
            if not terms:
                return out
            terms = [[1.0, out]] + terms
