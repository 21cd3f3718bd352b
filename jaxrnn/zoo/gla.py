"""Gated Linear Attention (Yang et al. 2023, arXiv 2312.06635), as flash-linear-attention's
``GatedLinearAttention`` layer defines it.

A layer maps ``x [*batch, input_size]`` to ``y [*batch, hidden_size]``; its state is a
:class:`jaxrnn.zoo.deltanet.MatrixCellState` (the matrix state ``S [*batch, heads, d_k, d_v]``
and, with ``use_short_conv``, the short convolution's window). Layout (PyTorch's ``[out, in]``,
fla's names; ``D_k = expand_k * hidden_size``, ``D_v = expand_v * hidden_size``, split into
``heads`` heads of ``d_k = D_k / heads``, ``d_v = D_v / heads``)::

    q_proj, k_proj: [D_k, I]      v_proj: [D_v, I]      g_proj: [D_v, I] (use_output_gate)
    gk_proj0: [gate_low_rank_dim, I]    gk_proj1: [D_k, gate_low_rank_dim]    gk_bias: [D_k]
    q_conv, k_conv: [D_k, conv_size]    v_conv: [D_v, conv_size]    (use_short_conv)
    o_norm: [d_v] (fla's g_norm_swish_gate / g_norm)                o_proj: [hidden_size, D_v]

Initialisation as fla's layer: ``torch.nn.Linear``/``Conv1d`` defaults (``U(±1/sqrt(fan_in))``,
the low-rank gate's bias too), ``o_norm`` ones.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple, Optional

import jax
import jax.numpy as jnp

from jaxrnn.zoo import _common as C
from jaxrnn.zoo.deltanet import MatrixCell, _linear_init

Array = jax.Array

__all__ = ["GLAParams", "GLACell", "gla"]


class GLAParams(NamedTuple):
    """GLA parameters (module docstring for shapes)."""

    q_proj: Array
    k_proj: Array
    v_proj: Array
    g_proj: Optional[Array]
    gk_proj0: Array
    gk_proj1: Array
    gk_bias: Array
    q_conv: Optional[Array]
    k_conv: Optional[Array]
    v_conv: Optional[Array]
    conv_bias: Optional[Array]
    o_norm: Array
    o_proj: Array


@dataclasses.dataclass(frozen=True, repr=False)
class GLACell(MatrixCell):
    """Gated Linear Attention (build it with :func:`gla`). Per step, per head, with a decay
    per key channel::

        q, k, v = W_q x, W_k x, W_v x                       (silu(causal_conv(.)) with use_short_conv)
        log α = logsigmoid(W_gk1 W_gk0 x + b_gk) / gate_logit_normalizer    ([d_k]; clamped at clamp_min)
        S_t = diag(α) S_{t-1} + k vᵀ                        (S: [d_k, d_v])
        o = d_k^{-1/2} S_tᵀ q
        y = W_o [rmsnorm(o) ⊙ w_norm ⊙ silu(W_g x)]_heads   (rmsnorm(o) ⊙ w_norm without the output gate)

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxrnn
      >>> from jaxrnn.zoo.gla import gla
      >>> cell = gla(16, num_heads=2)
      >>> params = cell.init(jax.random.key(0), input_size=16)
      >>> xs = jax.random.normal(jax.random.key(1), (3, 20, 16))               # [B, T, I]
      >>> h, ys = jaxrnn.unroll(cell, params, None, xs, mode="chunked", chunk_size=8)
      >>> h2, ys2 = jaxrnn.unroll(cell, params, None, xs)
      >>> ys.shape, h.S.shape, bool(jnp.allclose(ys, ys2, atol=1e-5))
      ((3, 20, 16), (3, 2, 4, 8), True)
    """

    hidden_size: int
    num_heads: int = 4
    expand_k: float = 0.5
    expand_v: float = 1.0
    use_short_conv: bool = False
    conv_size: int = 4
    conv_bias: bool = False
    use_output_gate: bool = True
    norm_eps: float = 1e-5
    gate_logit_normalizer: float = 16.0
    gate_low_rank_dim: int = 16
    clamp_min: Optional[float] = None
    chunk_size: Optional[int] = None

    name: ClassVar[str] = "gla"

    def __post_init__(self):
        for f in ("hidden_size", "num_heads", "conv_size", "gate_low_rank_dim"):
            object.__setattr__(self, f, C.check_positive_int(getattr(self, f), f))
        if self.chunk_size is not None:
            object.__setattr__(self, "chunk_size", C.check_positive_int(self.chunk_size, "chunk_size"))
        for f in ("expand_k", "expand_v"):
            dim = int(self.hidden_size * float(getattr(self, f)))
            if dim < 1 or dim % self.num_heads:
                raise ValueError(f"`{f}` * `hidden_size` = {dim} must be a positive multiple of `num_heads` "
                                 f"({self.num_heads}); got {f}={getattr(self, f)}.")

    def __repr__(self) -> str:
        return (f"gla(hidden_size={self.hidden_size}, num_heads={self.num_heads}, expand_k={self.expand_k}, "
                f"expand_v={self.expand_v}, use_short_conv={self.use_short_conv})")

    @property
    def key_dim(self) -> int:
        return int(self.hidden_size * float(self.expand_k))

    @property
    def value_dim(self) -> int:
        return int(self.hidden_size * float(self.expand_v))

    @property
    def head_k_dim(self) -> int:
        return self.key_dim // self.num_heads

    @property
    def head_v_dim(self) -> int:
        return self.value_dim // self.num_heads

    @property
    def conv_channels(self) -> int:
        return 2 * self.key_dim + self.value_dim

    @property
    def scale(self) -> float:
        return self.head_k_dim ** -0.5

    def init(self, key: Array, input_size: int, dtype=jnp.float32) -> GLAParams:
        """fla's initialisation (module docstring)."""
        I = C.check_positive_int(input_size, "input_size")
        Dk, Dv, r = self.key_dim, self.value_dim, self.gate_low_rank_dim
        ks = iter(jax.random.split(key, 16))
        lin = lambda out, fan: _linear_init(next(ks), (out, fan), fan, dtype)
        q_proj, k_proj, v_proj = lin(Dk, I), lin(Dk, I), lin(Dv, I)
        g_proj = lin(Dv, I) if self.use_output_gate else None
        gk0, gk1 = lin(r, I), lin(Dk, r)
        gk_bias = _linear_init(next(ks), (Dk,), r, dtype)
        convs, conv_bias = [None] * 3, None
        if self.use_short_conv:
            W = self.conv_size
            convs = [_linear_init(next(ks), (n, W), W, dtype) for n in (Dk, Dk, Dv)]
            if self.conv_bias:
                conv_bias = _linear_init(next(ks), (self.conv_channels,), W, dtype)
        return GLAParams(q_proj, k_proj, v_proj, g_proj, gk0, gk1, gk_bias, *convs, conv_bias,
                         jnp.ones((self.head_v_dim,), dtype), lin(self.hidden_size, Dv))

    def check_params(self, params, name: str = "params") -> int:
        """Checks ``params`` against this cell; returns the input size ``I``."""
        C.check_params_type(params, GLAParams, self, name)
        Dk, Dv, r = self.key_dim, self.value_dim, self.gate_low_rank_dim
        w = params.q_proj
        if getattr(w, "ndim", None) != 2:
            raise ValueError(f"`{name}.q_proj` must have shape [{Dk}, input_size]; "
                             f"got {getattr(w, 'shape', type(w).__name__)}.")
        I = int(w.shape[1])
        want = dict(q_proj=(Dk, I), k_proj=(Dk, I), v_proj=(Dv, I), gk_proj0=(r, I), gk_proj1=(Dk, r),
                    gk_bias=(Dk,), o_norm=(self.head_v_dim,), o_proj=(self.hidden_size, Dv))
        if self.use_output_gate:
            want.update(g_proj=(Dv, I))
        if self.use_short_conv:
            W = self.conv_size
            want.update(q_conv=(Dk, W), k_conv=(Dk, W), v_conv=(Dv, W))
            if self.conv_bias:
                want.update(conv_bias=(self.conv_channels,))
        for f in GLAParams._fields:
            value = getattr(params, f)
            if f in want:
                C.check_array(value, f"{name}.{f}", want[f])
            elif value is not None:
                raise ValueError(f"`{name}.{f}` must be None for {self!r}; got {type(value).__name__}.")
        return I

    def _mix(self, params, x, p):
        H, dk, dv, Dk = self.num_heads, self.head_k_dim, self.head_v_dim, self.key_dim
        lead = p.shape[:-1]
        q = p[..., :Dk].reshape(lead + (H, dk))
        k = p[..., Dk:2 * Dk].reshape(lead + (H, dk))
        v = p[..., 2 * Dk:].reshape(lead + (H, dv))
        gk = ((x @ params.gk_proj0.T) @ params.gk_proj1.T).astype(jnp.float32) + params.gk_bias.astype(jnp.float32)
        log_decay = jax.nn.log_sigmoid(gk) / self.gate_logit_normalizer
        if self.clamp_min is not None:
            log_decay = jnp.maximum(log_decay, self.clamp_min)
        gate = None if params.g_proj is None else (x @ params.g_proj.T).reshape(lead + (H, dv))
        return q, k, v, log_decay.reshape(lead + (H, dk)), None, gate


def gla(hidden_size: int, *, num_heads: int = 4, expand_k: float = 0.5, expand_v: float = 1.0,
        use_short_conv: bool = False, conv_size: int = 4, conv_bias: bool = False, use_output_gate: bool = True,
        norm_eps: float = 1e-5, gate_logit_normalizer: float = 16.0, gate_low_rank_dim: int = 16,
        clamp_min: Optional[float] = None, chunk_size: Optional[int] = None) -> GLACell:
    """A GLA layer with fla's ``GatedLinearAttention`` defaults; see :class:`GLACell`.

    Args:
      hidden_size: size of the output; ``D_k = expand_k * hidden_size``, ``D_v = expand_v * hidden_size``.
      num_heads: heads.
      use_short_conv, conv_size, conv_bias: a short causal convolution (silu) of ``q, k, v``.
      use_output_gate: ``silu(W_g x)`` after the RMS norm.
      norm_eps: RMS norm epsilon.
      gate_logit_normalizer: divides ``logsigmoid`` of the decay logits (16: a slow decay).
      gate_low_rank_dim: rank of the decay projection.
      clamp_min: lower bound of the log-decay, or None.
      chunk_size: default chunk length of the parallel form (None: 64).
    """
    return GLACell(hidden_size, num_heads, expand_k, expand_v, use_short_conv, conv_size, conv_bias, use_output_gate,
                   norm_eps, gate_logit_normalizer, gate_low_rank_dim, clamp_min, chunk_size)
