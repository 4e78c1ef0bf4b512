"""The two DANet attention modules (Fu et al., CVPR 2019).

:class:`PositionAttention` (PAM) relates every spatial position to every other one; it is
computed exactly but in bounded memory by processing the queries in chunks. Each softmax row
depends on one query only, so splitting the queries changes nothing but the peak memory.

:class:`ChannelAttention` (CAM) relates every channel map to every other one, with the
``max(energy) - energy`` trick of the official implementation kept as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ChannelAttention",
    "PositionAttention",
    "attend_chunked",
    "attend_naive",
    "attend_split",
    "is_exporting",
]


def attend_naive(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """Reference attention, the official formulation.

    ``query`` [B, N, d], ``key`` [B, d, N], ``value`` [B, C, N] -> [B, C, N]. Materialises the full
    N x N energy and attention matrices.
    """
    attention = torch.softmax(torch.bmm(query, key), dim=-1)
    return torch.bmm(value, attention.transpose(1, 2))


def attend_chunked(query: Tensor, key: Tensor, value: Tensor, chunk: int) -> Tensor:
    """Exact attention over ``chunk`` queries at a time (eager mode).

    Peak extra memory is two ``chunk x N`` matrices instead of two ``N x N`` ones. The python loop
    depends on N, so a traced graph would freeze the number of chunks: exporters should use
    :func:`attend_split` instead (see :class:`PositionAttention`).
    """
    n = query.shape[1]
    if n <= chunk:
        return attend_naive(query, key, value)
    parts = [attend_naive(query[:, start : start + chunk], key, value) for start in range(0, n, chunk)]
    return torch.cat(parts, dim=2)


def attend_split(query: Tensor, key: Tensor, value: Tensor, num_chunks: int) -> Tensor:
    """Exact attention with the queries split into a fixed number of equal chunks.

    Shape-agnostic, hence export-friendly: the queries are zero-padded to ``num_chunks * m`` with
    ``m = ceil(N / num_chunks)`` (symbolic under tracing/export), viewed as ``num_chunks`` slices of
    ``m`` queries, each attended separately, and the padded rows are dropped. The graph holds
    ``num_chunks`` copies of matmul/softmax/matmul whatever the input size; peak memory is two
    ``m x N`` matrices, i.e. ``N**2 / num_chunks`` per matrix.
    """
    batch, n, dim = query.shape
    rows = (n + num_chunks - 1) // num_chunks
    padded = F.pad(query, (0, 0, 0, rows * num_chunks - n))
    slices = padded.reshape(batch, num_chunks, rows, dim).unbind(1)
    parts = [attend_naive(part, key, value) for part in slices]
    return torch.cat(parts, dim=2)[:, :, :n]


def is_exporting() -> bool:
    """True while torch.jit tracing, torch.export/dynamo export or ONNX export is running."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return True
    compiler = getattr(torch, "compiler", None)
    check = getattr(compiler, "is_exporting", None) if compiler is not None else None
    return bool(check()) if callable(check) else False


class PositionAttention(nn.Module):
    """Position attention module: ``gamma * softmax(Q^T K) V + x`` over all positions.

    Query and key are 1x1 projections to ``key_channels`` (C/8 in DANet), the value a 1x1
    projection to C; ``gamma`` starts at zero as in the paper.

    How the attention is evaluated (all three are exact; they differ in memory and traceability):

    * ``query_chunk`` (int): in eager mode, queries are processed ``query_chunk`` at a time
      (:func:`attend_chunked`); memory is ``O(query_chunk * N)``.
    * ``export_chunks`` (int): used whenever :func:`is_exporting` is true (jit tracing, ONNX export,
      torch.export), or always if ``force_split`` is set. The queries are split into that fixed
      number of equal chunks (:func:`attend_split`), which keeps H and W dynamic in the exported
      graph; memory is ``O(N**2 / export_chunks)``. An exporter may change the attribute before
      exporting.
    * :meth:`_attend_naive`: the plain N x N formulation, for reference and tests.
    """

    def __init__(
        self,
        in_channels: int,
        key_channels: int,
        *,
        query_chunk: int = 1024,
        export_chunks: int = 64,
    ) -> None:
        super().__init__()
        self.query = nn.Conv2d(in_channels, key_channels, kernel_size=1)
        self.key = nn.Conv2d(in_channels, key_channels, kernel_size=1)
        self.value = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.query_chunk = int(query_chunk)
        self.export_chunks = int(export_chunks)
        self.force_split = False

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        query = self.query(x).flatten(2).transpose(1, 2)  # [B, N, d]
        key = self.key(x).flatten(2)  # [B, d, N]
        value = self.value(x).flatten(2)  # [B, C, N]
        return query, key, value

    def _attend_naive(self, x: Tensor) -> Tensor:
        """The attended values [B, C, H, W] (before gamma and residual), naive N x N path."""
        return attend_naive(*self._project(x)).reshape(x.shape)

    def _attend_chunked(self, x: Tensor) -> Tensor:
        """The attended values [B, C, H, W], chunk size ``query_chunk`` (eager)."""
        return attend_chunked(*self._project(x), self.query_chunk).reshape(x.shape)

    def _attend_split(self, x: Tensor) -> Tensor:
        """The attended values [B, C, H, W], ``export_chunks`` fixed chunks (traceable)."""
        return attend_split(*self._project(x), self.export_chunks).reshape(x.shape)

    def forward(self, x: Tensor) -> Tensor:
        split = self.force_split or is_exporting()
        attended = self._attend_split(x) if split else self._attend_chunked(x)
        return self.gamma * attended + x

    def extra_repr(self) -> str:
        return f"query_chunk={self.query_chunk}, export_chunks={self.export_chunks}"


class ChannelAttention(nn.Module):
    """Channel attention module: ``gamma * softmax(max(E) - E) X + x`` with ``E = X X^T`` (C x C).

    The ``max - energy`` subtraction is kept exactly as in the official code: it is what trained
    checkpoints expect, and it also keeps the softmax input non-negative.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        features = x.flatten(2)  # [B, C, N]
        energy = torch.bmm(features, features.transpose(1, 2))
        energy = energy.amax(dim=-1, keepdim=True) - energy
        attention = torch.softmax(energy, dim=-1)
        attended = torch.bmm(attention, features).reshape(x.shape)
        return self.gamma * attended + x
