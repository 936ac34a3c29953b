"""Noise schedules as plain data, shared by every scheduler (one copy of each formula).

- ``betas_for``: the training noise schedule beta_1..beta_T (DDPM, Ho et al. 2020, sec. 4;
  cosine: Nichol & Dhariwal 2021, eq. 17; sigmoid: GeoDiff, Xu et al. 2022), optionally rescaled
  to zero terminal SNR (Lin et al. 2023, Algorithm 1).
- ``spaced_timesteps``: which training timesteps a sampling run of n steps visits
  (Lin et al. 2023, Table 2: linspace, leading, trailing).
- ``karras_sigmas`` / ``exponential_sigmas``: sigma discretisations (Karras et al. 2022, eq. 5).
- ``sigma_to_t``: a continuous timestep for any sigma, interpolating log-sigma.
- ``dynamic_threshold``: Saharia et al. 2022 (Imagen), sec. 2.3.
- ``shift_flow_sigmas`` / ``time_shift_flow_sigmas`` / ``stretch_flow_sigmas_to_terminal``: the
  flow-matching sigma shifts (SD3, Flux, LTX-Video), used by flow-matching Euler and the
  multistep solvers alike.
- ``checked_begin_index``: the img2img start index, validated against the run;
  ``BeginIndexMixin`` / ``RunIndexMixin``: ``begin_index``, ``set_begin_index`` (and
  ``step_index``) built on it.
- ``own_option``: a config value the scheduler's class takes (not a key kept from a swap).

Dtypes follow the diffusers format's reference computations (float32 betas and cumulative
products) so that the same config gives the same numbers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusion_kernel.configuration import config_parameters
from diffusion_kernel.errors import SchedulerError
from diffusion_kernel.noise import randn
from diffusion_kernel.scheduling import check_option

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """beta_t = 1 - alpha_bar(t+1)/alpha_bar(t), alpha_bar(t) = cos^2((t/T + 0.008)/1.008 * pi/2),
    clipped at ``max_beta`` (Nichol & Dhariwal 2021, eq. 17)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    t = np.arange(num_train_timesteps)
    betas = [min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps),
                 max_beta) for i in t]
    return torch.tensor(betas, dtype=torch.float32)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so the last step has SNR 0 (Lin et al. 2023, Algorithm 1)."""
    alphas_bar_sqrt = (1.0 - betas).cumprod(dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


def betas_for(
    beta_schedule: str,
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    trained_betas: Sequence[float] | np.ndarray | None = None,
    rescale_betas_zero_snr: bool = False,
    owner: str = "scheduler",
) -> torch.Tensor:
    """The float32 betas of a training schedule, from its config values."""
    if trained_betas is not None:
        betas = torch.tensor(np.asarray(trained_betas), dtype=torch.float32)
    else:
        check_option("beta_schedule", beta_schedule, BETA_SCHEDULES, owner)
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        elif beta_schedule == "scaled_linear":  # linear in sqrt(beta): latent diffusion
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps,
                                   dtype=torch.float32) ** 2
        elif beta_schedule == "sigmoid":  # GeoDiff: slow start and end, steep middle
            ramp = torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps, dtype=torch.float32))
            betas = ramp * (beta_end - beta_start) + beta_start
        else:
            betas = cosine_betas(num_train_timesteps)
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def alphas_cumprod_for(betas: torch.Tensor, rescale_betas_zero_snr: bool = False) -> torch.Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s); a zero-SNR schedule's exact 0 at the end is nudged
    to 2**-24 so that sigma = sqrt((1 - alpha_bar) / alpha_bar) stays finite."""
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    if rescale_betas_zero_snr:
        alphas_cumprod[-1] = 2**-24
    return alphas_cumprod


def spaced_timesteps(
    timestep_spacing: str,
    num_inference_steps: int,
    num_train_timesteps: int,
    steps_offset: int = 0,
    owner: str = "scheduler",
) -> np.ndarray:
    """Descending int64 training timesteps for a run of ``num_inference_steps``."""
    check_option("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS, owner)
    n, T = num_inference_steps, num_train_timesteps
    if timestep_spacing == "linspace":
        timesteps = np.linspace(0, T - 1, n).round()[::-1]
    elif timestep_spacing == "leading":
        timesteps = (np.arange(0, n) * (T // n)).round()[::-1] + steps_offset
    else:  # trailing: always includes the last training timestep T-1
        timesteps = np.round(np.arange(T, 0, -T / n)) - 1
    return timesteps.copy().astype(np.int64)


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t): the VE view of a VP schedule."""
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).numpy()


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
    (Karras et al. 2022, eq. 5), descending."""
    return karras_sigmas_at(np.linspace(0, 1, n), sigma_min, sigma_max, rho)


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """Sigmas evenly spaced in log-sigma, descending."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def beta_sigmas(sigma_min: float, sigma_max: float, n: int, alpha: float = 0.6,
                beta: float = 0.6) -> np.ndarray:
    """sigma_i = sigma_min + Q(1 - i/(n-1)) (sigma_max - sigma_min), descending, with Q the
    inverse CDF of the Beta(alpha, beta) distribution (Lee et al. 2024, "Beta sampling is all you
    need"; alpha = beta = 0.6 as in the diffusers format): more steps near both ends."""
    quantiles = np.array(_beta_ppf(tuple((1.0 - np.linspace(0, 1, n)).tolist()), alpha, beta))
    return sigma_min + quantiles * (sigma_max - sigma_min)


@functools.lru_cache(maxsize=64)
def _beta_ppf(probabilities: tuple[float, ...], a: float, b: float) -> tuple[float, ...]:
    """Inverse of ``_beta_cdf`` by bisection, to double precision (60 halvings of [0, 1])."""
    q = np.array(probabilities, dtype=np.float64)
    lo, hi = np.zeros_like(q), np.ones_like(q)
    for _ in range(60):
        mid = (lo + hi) / 2
        below = _beta_cdf(mid, a, b) < q
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    x = (lo + hi) / 2
    return tuple(np.where(q <= 0, 0.0, np.where(q >= 1, 1.0, x)).tolist())


def _beta_cdf(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """The regularised incomplete beta function I_x(a, b) (DLMF 8.17.22): its continued fraction
    converges fast for x < (a + 1) / (a + b + 2); above that, I_x(a, b) = 1 - I_{1-x}(b, a)."""
    flip = x > (a + 1) / (a + b + 2)
    xs = np.where(flip, 1 - x, x)
    aa, bb = np.where(flip, b, a), np.where(flip, a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        front = np.exp(aa * np.log(xs) + bb * np.log1p(-xs) - _log_beta(aa, bb)) / aa
        value = front * _incomplete_beta_fraction(xs, aa, bb)
    value = np.where(xs <= 0, 0.0, value)
    return np.where(flip, 1 - value, value)


def _log_beta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lgamma = np.vectorize(math.lgamma)
    return lgamma(a) + lgamma(b) - lgamma(a + b)


def _incomplete_beta_fraction(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 / (1 + d1 / (1 + d2 / (1 + ...))) with d_{2m+1} = -(a+m)(a+b+m) x / ((a+2m)(a+2m+1))
    and d_{2m} = m (b-m) x / ((a+2m-1)(a+2m)), by the modified Lentz method."""
    tiny = 1e-300
    f = np.full_like(x, tiny)
    c, d = f.copy(), np.zeros_like(x)
    for j in range(1, 400):
        if j == 1:
            numerator = np.ones_like(x)
        else:
            k = j - 1  # numerator j is d_k
            m = k // 2
            numerator = (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)) if k % 2 == 0 else
                         -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)))
        d = 1 + numerator * d
        d = np.where(np.abs(d) < tiny, tiny, d)
        c = 1 + numerator / c
        c = np.where(np.abs(c) < tiny, tiny, c)
        d = 1 / d
        delta = c * d
        f = f * delta
        if np.all(np.abs(delta - 1) < 1e-15):
            break
    return f


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The continuous training timestep of each sigma: linear interpolation in log-sigma between
    the two neighbouring training sigmas (``log_sigmas`` ascending with t)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    # the last training step whose log-sigma is <= log_sigma (the first one below the range)
    low_idx = (np.searchsorted(log_sigmas, log_sigma, side="right") - 1).clip(
        0, log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    t = (1 - w) * low_idx + w * high_idx
    return t.reshape(sigma.shape)


def dynamic_threshold(sample: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Clamp x0 to [-s, s] and divide by s, where s is the per-sample ``ratio`` quantile of |x0|,
    clipped to [1, ``max_value``] (Saharia et al. 2022, sec. 2.3)."""
    dtype = sample.dtype
    batch, channels, *rest = sample.shape
    if dtype not in (torch.float32, torch.float64):
        sample = sample.float()  # quantile is not implemented for half precision on CPU
    flat = sample.reshape(batch, channels * math.prod(rest))
    s = torch.quantile(flat.abs(), ratio, dim=1)
    s = torch.clamp(s, min=1, max=max_value).unsqueeze(1)
    flat = torch.clamp(flat, -s, s) / s
    return flat.reshape(batch, channels, *rest).to(dtype)


def broadcast_to(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample coefficients of shape (B,) reshaped to broadcast against a (B, ...) sample."""
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


# Steps are memory-bound: on a large sample each full-size pass costs about as much as each
# full-size allocation (fresh memory is faulted in page by page). The helpers below write the
# common step expressions with one allocation and as few passes as the coefficients allow.


def lincomb(p: float, x: torch.Tensor, q: float, y: torch.Tensor) -> torch.Tensor:
    """p x + q y as a new tensor: one allocation, one or two passes."""
    if p == 0.0:
        return y * q
    if p == 1.0:
        return torch.add(x, y, alpha=q)
    out = torch.mul(x, p)
    if out.dtype == torch.promote_types(out.dtype, y.dtype) and out.shape == y.shape:
        return out.add_(y, alpha=q)
    return torch.add(out, y, alpha=q)


def accumulate(fresh: torch.Tensor, scale: float | torch.Tensor,
               *terms: tuple[float, torch.Tensor]) -> torch.Tensor:
    """``scale * fresh + sum(c * t for c, t in terms)``, accumulated in ``fresh`` (a new tensor
    the caller owns and gives up, e.g. a noise draw: no allocation) when it can hold the result's
    dtype and shape; else a new tensor, the terms summed first (the reference's order for
    "mean + std * noise")."""
    dtype = functools.reduce(torch.promote_types, (t.dtype for _, t in terms), fresh.dtype)
    if dtype == fresh.dtype and all(t.shape == fresh.shape for _, t in terms):
        out = fresh if isinstance(scale, float) and scale == 1.0 else fresh.mul_(scale)
        for c, t in terms:
            out.add_(t, alpha=c)
        return out
    out = None
    for c, t in terms:
        out = t * c if out is None else out.add(t, alpha=c)
    return out + scale * fresh


def as_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor.to(dtype)`` without the call when it is already ``dtype``: a no-op ``.to`` costs
    about 2 us, a fifth of a small flow-matching step."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def uniform_time(timestep: float | torch.Tensor, batch: int) -> float | None:
    """The one time a step is taken at, as a float (a number, a one-element tensor, or one per
    sample all equal), else None: steps look their coefficients up by it instead of computing
    them with a dozen tiny tensor ops per call."""
    if not isinstance(timestep, torch.Tensor):
        return float(timestep)
    if timestep.numel() == 1:
        return float(timestep)
    flat = timestep.reshape(-1)
    if flat.numel() == batch and bool((flat == flat[0]).all()):
        return float(flat[0])
    return None


def gaussian_noise(
    like: torch.Tensor,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Standard normal noise shaped like ``like`` (same dtype and device), in ``out`` if given.

    ``generator`` is one ``torch.Generator`` for the whole batch, or a list with one generator per
    sample (the kernel's ``noise.randn`` convention: seeds s1..s4 for a batch equal four batch-1
    runs with those seeds, as in the diffusers format)."""
    if isinstance(generator, (list, tuple)) and len(generator) != like.shape[0]:
        raise SchedulerError(
            f"got {len(generator)} generators for a batch of {like.shape[0]} samples; pass "
            f"one generator per sample, or a single generator"
        )
    return randn(like.shape, generator, like.device, like.dtype, out=out)


def added_noise(owner: Any, like: torch.Tensor,
                generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """``gaussian_noise`` for a step that only adds it to a tensor of its own, drawn into a
    buffer ``owner`` keeps and overwrites on its next call: one allocation fewer per step."""
    buffer = getattr(owner, "_noise_buffer", None)
    if buffer is None or buffer.shape != like.shape or buffer.dtype != like.dtype or \
            buffer.device != like.device:
        buffer = owner._noise_buffer = torch.empty(like.shape, dtype=like.dtype,
                                                   device=like.device)
    return gaussian_noise(like, generator, buffer)


def exp_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """beta_t = 1 - alpha_bar(t+1)/alpha_bar(t) for alpha_bar(t) = exp(-12 t), clipped at
    ``max_beta``: the "exp" training schedule some Heun configs name."""
    T = num_train_timesteps
    betas = [min(1 - math.exp(-12.0 * (i + 1) / T) / math.exp(-12.0 * i / T), max_beta)
             for i in range(T)]
    return torch.tensor(betas, dtype=torch.float32)


def karras_sigmas_at(ramp, sigma_min: float, sigma_max: float, rho: float = 7.0):
    """Karras et al. 2022, eq. 5 at positions ``ramp`` in [0, 1] (0 -> sigma_max, 1 -> sigma_min):
    (sigma_max^(1/rho) + ramp (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho. ``ramp`` may be a numpy
    array or a tensor; the result has its type and dtype."""
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def shift_flow_sigmas(sigmas, shift: float):
    """Flow-matching sigmas moved towards the noisy end: shift s / (1 + (shift - 1) s)
    (Esser et al. 2024, SD3, eq. 23); a numpy array or a tensor, of the same type back."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def time_shift_flow_sigmas(sigmas: np.ndarray, mu: float,
                           time_shift_type: str = "exponential") -> np.ndarray:
    """Resolution-dependent ("dynamic") shift of flow-matching sigmas, as in Flux:
    e^mu / (e^mu + (1/s - 1)) ("exponential", = ``shift_flow_sigmas`` with shift e^mu) or
    mu / (mu + (1/s - 1)) ("linear")."""
    if time_shift_type == "exponential":
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    return mu / (mu + (1 / sigmas - 1))


def stretch_flow_sigmas_to_terminal(sigmas: np.ndarray, shift_terminal: float) -> np.ndarray:
    """Rescale 1 - s so that the last sigma equals ``shift_terminal`` (LTX-Video)."""
    one_minus = 1 - sigmas
    return 1 - one_minus / (one_minus[-1] / (1 - shift_terminal))


def checked_begin_index(scheduler, begin_index: int) -> int:
    """``begin_index`` as an int, after checking that the scheduler has a run (``set_timesteps``
    was called) and that the index is one of its timesteps'."""
    scheduler._require_timesteps()
    n = len(scheduler.timesteps)
    if isinstance(begin_index, bool) or not 0 <= begin_index < n:
        raise SchedulerError(f"{type(scheduler).__name__}.set_begin_index: {begin_index} is "
                             f"outside this run of {n} timesteps (0..{n - 1})")
    return int(begin_index)


class BeginIndexMixin:
    """``begin_index`` / ``set_begin_index`` (img2img: where the run starts, checked against the
    run) of the schedulers that keep ``_begin_index``."""

    @property
    def begin_index(self) -> int | None:
        return getattr(self, "_begin_index", None)

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the run at ``timesteps[begin_index]`` (img2img: call after ``set_timesteps``);
        schedulers with a history start it empty there."""
        self._begin_index = checked_begin_index(self, begin_index)


class RunIndexMixin(BeginIndexMixin):
    """``BeginIndexMixin`` and ``step_index``, for the schedulers that count their steps in
    ``_step_index``."""

    @property
    def step_index(self) -> int | None:
        """Index of the next entry of ``timesteps`` to step (None before the first step)."""
        return self._step_index


@functools.cache
def _constructor_parameters(cls: type) -> frozenset[str]:
    return frozenset(config_parameters(cls))


def own_option(scheduler, name: str, default: Any) -> Any:
    """``scheduler.config[name]`` when the scheduler's class takes ``name``, else ``default``.
    A config swapped in from another scheduler keeps that scheduler's keys (they are saved
    again), but they are not this class's options and must not change its numbers (a DDIM
    config's ``rescale_betas_zero_snr`` or ``thresholding`` means nothing to PNDM)."""
    if name in _constructor_parameters(type(scheduler)):
        return scheduler.config[name]
    return default
