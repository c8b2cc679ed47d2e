"""Count what Triton kernels really load and store, in Triton's CPU interpreter.

    with InterpreterTraffic() as counted:
        some_launcher(...)                 # kernels run in the interpreter (TRITON_INTERPRET=1)
    counted.launches                       # [Launch(kernel, distinct bytes read, distinct bytes written)]
    counted.eager                          # the torch ops run between launches (fastmvit.costmodel.Traffic)

Every masked load and store the interpreter executes is seen (``tl.load``/``tl.store`` with or
without a mask all end there): the addresses of the lanes whose mask is true, with the element
size of the pointer. Per launch the distinct addresses are counted, reads and writes apart: the
convention of ``fastmvit.kernels.traffic``. Torch ops the launcher runs outside its kernels are
counted by ``fastmvit.costmodel.TrafficCounter``; the interpreter's own argument copies are
hidden from it.

``compare_with_statements(fn, *args)`` runs a launcher both ways, for real in the interpreter and
on meta copies of its arguments inside ``stating_launches()``, and lists where they disagree:
``tests/test_kernel_traffic.py`` holds every launcher's statements to the truth with it.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils._pytree import tree_map

from fastmvit.costmodel import TrafficCounter, meta_like
from fastmvit.kernels.traffic import Launch, stating_launches


def _distinct_bytes(accesses: dict[int, list[np.ndarray]]) -> int:
    """Distinct bytes of {element size: [address arrays]}."""
    return sum(np.unique(np.concatenate(parts)).size * size for size, parts in accesses.items() if parts)


class _InlineCustomOps(TrafficCounter):
    """TrafficCounter that runs fastmvit's custom ops inline: their Python implementation executes
    inside this mode, so the torch ops they run are counted one by one and their kernels reach the
    interpreter hooks. (The cost model states them instead; this measures them.) The
    implementations are found through torch's custom-op registry, so any version of the ops works."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = getattr(getattr(func, "_schema", None), "name", "")
        if name.startswith("fastmvit::"):
            from torch._library.custom_ops import OPDEFS
            with self:
                return OPDEFS[name]._init_fn(*args, **(kwargs or {}))
        return super().__torch_dispatch__(func, types, args, kwargs)


class InterpreterTraffic:
    """A context manager that records every interpreted Triton launch (see the module docstring).

    inline_custom_ops: count the torch ops inside fastmvit's custom ops too (whole-model
    measurements; ``eager`` then holds every torch op that ran, the custom ops' own included)."""

    def __init__(self, inline_custom_ops: bool = False) -> None:
        self.launches: list[Launch] = []
        self._reads: dict[int, list[np.ndarray]] | None = None
        self._writes: dict[int, list[np.ndarray]] | None = None
        self._counter = _InlineCustomOps() if inline_custom_ops else TrafficCounter()

    @property
    def eager(self):
        return self._counter.traffic

    def _note(self, book, ptrs, mask) -> None:
        if book is None:               # a load outside any launch we watch
            return
        addresses = np.asarray(ptrs.data)
        keep = np.broadcast_to(np.asarray(mask.data, dtype=bool), addresses.shape)
        size = ptrs.get_element_ty().primitive_bitwidth // 8
        book[size].append(addresses[keep].astype(np.uint64).ravel())

    def __enter__(self) -> "InterpreterTraffic":
        from triton.runtime import interpreter
        builder = interpreter.InterpreterBuilder
        load, store = builder.create_masked_load, builder.create_masked_store
        call = interpreter.GridExecutor.__call__
        me = self

        def counted_load(self, ptrs, mask, *args, **kwargs):
            me._note(me._reads, ptrs, mask)
            return load(self, ptrs, mask, *args, **kwargs)

        def counted_store(self, ptrs, value, mask, *args, **kwargs):
            me._note(me._writes, ptrs, mask)
            return store(self, ptrs, value, mask, *args, **kwargs)

        def counted_call(executor, *args, **kwargs):
            me._reads, me._writes = defaultdict(list), defaultdict(list)
            try:
                with _disable_current_modes():     # the interpreter's host copies are not the op's
                    return call(executor, *args, **kwargs)
            finally:
                me.launches.append(Launch(executor.fn.__name__, _distinct_bytes(me._reads),
                                          _distinct_bytes(me._writes)))
                me._reads = me._writes = None

        builder.create_masked_load, builder.create_masked_store = counted_load, counted_store
        interpreter.GridExecutor.__call__ = counted_call
        self._restore = lambda: (setattr(builder, "create_masked_load", load),
                                 setattr(builder, "create_masked_store", store),
                                 setattr(interpreter.GridExecutor, "__call__", call))
        self._counter.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._counter.__exit__(*exc)
        self._restore()


def compare_with_statements(fn, *args, rel: float = 0.02, **kwargs):
    """Run launcher ``fn(*args, **kwargs)`` in the interpreter, counting, and on meta copies of the
    arguments, stating. Returns (problems, counted launches, stated launches): problems lists each
    launch whose kernel differs or whose stated bytes read or written are off by more than `rel`
    of the counted ones, and a difference in the torch ops run between launches."""
    with InterpreterTraffic() as counted:
        fn(*args, **kwargs)
    with stating_launches() as stated, TrafficCounter() as eager:
        fn(*tree_map(meta_like, args), **tree_map(meta_like, kwargs))
    problems = []
    if [c.kernel for c in counted.launches] != [s.kernel for s in stated]:
        problems.append(f"launches: counted {[c.kernel for c in counted.launches]}, "
                        f"stated {[s.kernel for s in stated]}")
    for i, (c, s) in enumerate(zip(counted.launches, stated)):
        for what in ("read", "written"):
            true, said = getattr(c, what), getattr(s, what)
            if abs(said - true) > rel * max(true, 1):
                problems.append(f"launch {i} {c.kernel}: {what} {said} B stated, {true} B counted "
                                f"({(said - true) / max(true, 1):+.1%})")
    ran = {op.name: op.launches for op in counted.eager.per_op.values()}
    modeled = {op.name: op.launches for op in eager.traffic.per_op.values()}
    if ran != modeled:
        problems.append(f"torch ops between launches: ran {ran}, modeled {modeled}")
    return problems, counted.launches, stated
