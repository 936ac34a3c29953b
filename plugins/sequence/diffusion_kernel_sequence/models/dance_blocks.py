"""The levels of the Dance Diffusion U-Net (Harmonai; the audio U-Net of Crowson's v-diffusion):
residual blocks of two 5-tap convolutions with one-group normalisation and GELU, multi-head
self-attention over time at the deep levels, FIR resampling between levels.

These levels take no time embedding: the model feeds it once, as extra input channels of the
first level (``DownBlock1DNoSkip``). Weight keys follow the diffusers format.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .resampling import FIRDownsample1d, FIRUpsample1d

HEAD_CHANNELS = 32  # channels per attention head: a layer of C channels has C // 32 heads


class ResConvBlock(nn.Module):
    """conv5 -> GroupNorm(1) -> GELU -> conv5 [-> GroupNorm(1) -> GELU unless ``is_last``], plus
    the input (through a 1x1 convolution when the channel count changes)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int,
                 is_last: bool = False):
        super().__init__()
        self.is_last = is_last
        self.has_conv_skip = in_channels != out_channels
        if self.has_conv_skip:
            self.conv_skip = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.conv_1 = nn.Conv1d(in_channels, mid_channels, 5, padding=2)
        self.group_norm_1 = nn.GroupNorm(1, mid_channels)
        self.conv_2 = nn.Conv1d(mid_channels, out_channels, 5, padding=2)
        if not is_last:
            self.group_norm_2 = nn.GroupNorm(1, out_channels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = self.conv_skip(hidden_states) if self.has_conv_skip else hidden_states
        hidden_states = self.conv_2(F.gelu(self.group_norm_1(self.conv_1(hidden_states))))
        if not self.is_last:
            hidden_states = F.gelu(self.group_norm_2(hidden_states))
        if torch.is_grad_enabled():
            return hidden_states + residual
        return hidden_states.add_(residual)  # inference: into the fresh activation


class SelfAttention1d(nn.Module):
    """Multi-head self-attention over the time axis with a one-group norm before it and the
    input added after it (keys ``group_norm``, ``query``, ``key``, ``value``, ``proj_attn``).
    Scaled dot-product attention (Vaswani et al. 2017, eq. 1)."""

    def __init__(self, in_channels: int, n_head: int = 1):
        super().__init__()
        self.channels = in_channels
        self.num_heads = n_head
        self.group_norm = nn.GroupNorm(1, num_channels=in_channels)
        self.query = nn.Linear(in_channels, in_channels)
        self.key = nn.Linear(in_channels, in_channels)
        self.value = nn.Linear(in_channels, in_channels)
        self.proj_attn = nn.Linear(in_channels, in_channels)

    def _heads(self, projection: torch.Tensor) -> torch.Tensor:
        """(B, T, H * D) -> (B, H, T, D)."""
        batch, length, _ = projection.shape
        return projection.view(batch, length, self.num_heads, -1).transpose(1, 2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        tokens = self.group_norm(hidden_states).transpose(1, 2)  # (B, T, C)
        attended = F.scaled_dot_product_attention(
            self._heads(self.query(tokens)), self._heads(self.key(tokens)),
            self._heads(self.value(tokens)))
        attended = attended.transpose(1, 2).reshape(tokens.shape)
        return self.proj_attn(attended).transpose(1, 2) + hidden_states


def _attention(channels: int) -> SelfAttention1d:
    return SelfAttention1d(channels, channels // HEAD_CHANNELS)


class _Level(nn.Module):
    """Three residual blocks (``resnets``), each optionally followed by attention."""

    def _build(self, c_in: int, c_mid: int, c_out: int, attention: bool,
               last_is_last: bool = False) -> None:
        self.resnets = nn.ModuleList([
            ResConvBlock(c_in, c_mid, c_mid),
            ResConvBlock(c_mid, c_mid, c_mid),
            ResConvBlock(c_mid, c_mid, c_out, is_last=last_is_last),
        ])
        if attention:
            self.attentions = nn.ModuleList([_attention(c_mid), _attention(c_mid),
                                             _attention(c_out)])

    def _run(self, hidden_states: torch.Tensor) -> torch.Tensor:
        attentions = getattr(self, "attentions", None)
        for i, resnet in enumerate(self.resnets):
            hidden_states = resnet(hidden_states)
            if attentions is not None:
                hidden_states = attentions[i](hidden_states)
        return hidden_states


class DownBlock1D(_Level):
    """Halve the length (cubic FIR), then three residual blocks. Returns (states, (states,))."""

    attention = False

    def __init__(self, out_channels: int, in_channels: int, mid_channels: int | None = None):
        super().__init__()
        mid = out_channels if mid_channels is None else mid_channels
        self.down = FIRDownsample1d("cubic")
        self._build(in_channels, mid, out_channels, self.attention)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None):
        hidden_states = self._run(self.down(hidden_states))
        return hidden_states, (hidden_states,)


class AttnDownBlock1D(DownBlock1D):
    """``DownBlock1D`` with self-attention after each residual block."""

    attention = True


class DownBlock1DNoSkip(_Level):
    """The first level: the time-embedding map joins the input as extra channels, no
    resampling."""

    def __init__(self, out_channels: int, in_channels: int, mid_channels: int | None = None):
        super().__init__()
        mid = out_channels if mid_channels is None else mid_channels
        self._build(in_channels, mid, out_channels, attention=False)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None):
        hidden_states = self._run(torch.cat([hidden_states, temb], dim=1))
        return hidden_states, (hidden_states,)


class UpBlock1D(_Level):
    """Join the skip connection, three residual blocks, double the length (cubic FIR)."""

    attention = False
    mid_from_input = True  # the residual blocks' width: the input's (UpBlock1D) or the output's

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        super().__init__()
        default_mid = in_channels if self.mid_from_input else out_channels
        mid = default_mid if mid_channels is None else mid_channels
        self._build(2 * in_channels, mid, out_channels, self.attention)
        self.up = FIRUpsample1d("cubic")

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor],
                temb: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = torch.cat([hidden_states, res_hidden_states_tuple[-1]], dim=1)
        return self.up(self._run(hidden_states))


class AttnUpBlock1D(UpBlock1D):
    """``UpBlock1D`` with self-attention after each residual block (width: the output's)."""

    attention = True
    mid_from_input = False


class UpBlock1DNoSkip(_Level):
    """The last level: join the skip connection, three residual blocks, the last one without
    its closing norm and activation (it writes the model output); no resampling."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        super().__init__()
        mid = in_channels if mid_channels is None else mid_channels
        self._build(2 * in_channels, mid, out_channels, attention=False, last_is_last=True)

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor],
                temb: torch.Tensor | None = None) -> torch.Tensor:
        return self._run(torch.cat([hidden_states, res_hidden_states_tuple[-1]], dim=1))


class UNetMidBlock1D(nn.Module):
    """The bottleneck: halve the length, six residual blocks each followed by attention, double
    the length back."""

    def __init__(self, mid_channels: int, in_channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.down = FIRDownsample1d("cubic")
        widths = [in_channels] + [mid_channels] * 5 + [out_channels]
        self.resnets = nn.ModuleList(
            [ResConvBlock(widths[i], mid_channels, widths[i + 1]) for i in range(6)])
        self.attentions = nn.ModuleList([_attention(w) for w in widths[1:]])
        self.up = FIRUpsample1d("cubic")

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None):
        hidden_states = self.down(hidden_states)
        for resnet, attention in zip(self.resnets, self.attentions):
            hidden_states = attention(resnet(hidden_states))
        return self.up(hidden_states)
