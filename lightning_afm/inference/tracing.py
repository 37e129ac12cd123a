"""Whether an exporter or compiler is tracing, and the base class of modules with an export form.

No ``from __future__ import annotations`` here, on purpose: TorchScript resolves an inherited
method's annotations in the subclass's scope and cannot read them as strings there ("Unknown
type annotation: 'bool'"), so :class:`TraceAware`'s annotations must be real types.
"""

from typing import List

import torch
from torch import nn


def tracing() -> bool:
    """Whether an exporter or compiler is tracing the call (the legacy ONNX exporter and
    ``torch.jit.trace`` trace; ``torch.export``, the dynamo ONNX exporter and ``torch.compile`` compile)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


class TraceAware(nn.Module):
    """A module whose forward writes into preallocated outputs (``index_select(out=...)``,
    ``torch.add(out=...)``), which the ONNX exporters cannot follow: under a trace it takes the
    functional form of the same computation instead (the same values, fresh tensors).

    ``if not torch.jit.is_scripting() and self._exporting():`` guards that form: TorchScript never
    calls :meth:`_exporting` (``is_scripting()`` short-circuits) and compiles the ``out=`` path.
    """

    @torch.jit.unused
    def _exporting(self) -> bool:
        return tracing()

    @torch.jit.unused
    def _gathered(self, ids: torch.Tensor) -> List[torch.Tensor]:
        """``[F, B]`` ids -> each field's ``[B, w_i]`` rows by a plain ``index_select`` (for the
        lookups that hold one ``_Rows`` per field in ``self.fields``)."""
        return [torch.index_select(field.rows, 0, ids[i]) for i, field in enumerate(self.fields)]
