"""Shared pieces of the RL tests: a stub environment and tiny random Diffuser networks, built
the same way for this project's UNet1DModel and the reference's (diffusers, test-only)."""

from __future__ import annotations

import numpy as np
import torch

# A 2-level temporal UNet and a value function for horizon 16 (two stride-2 downsamplings in the
# down blocks and two in the value function's middle block: 16 -> 1).
COMMON = dict(sample_size=16, in_channels=6, out_channels=6, extra_in_channels=0,
              down_block_types=("DownResnetBlock1D", "DownResnetBlock1D"),
              block_out_channels=(16, 32), layers_per_block=1, use_timestep_embedding=True,
              act_fn="mish", time_embedding_type="positional", flip_sin_to_cos=False,
              freq_shift=1.0, norm_num_groups=8)
UNET = dict(COMMON, up_block_types=("UpResnetBlock1D",), out_block_type="OutConv1DBlock",
            mid_block_type="MidResTemporalBlock1D")
VALUE = dict(COMMON, up_block_types=(), out_block_type="ValueFunction",
             mid_block_type="ValueFunctionMidBlock1D", downsample_each_block=True)
# the reference checkpoints' scheduler (hopper-medium-v2), here with a short chain
SCHEDULER = dict(num_train_timesteps=5, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                 variance_type="fixed_small_log", prediction_type="sample")


class Space:
    def __init__(self, n: int):
        self.shape = (n,)


class StubEnv:
    """What the pipeline asks of an environment: spaces and a D4RL-style dataset."""

    observation_space, action_space = Space(4), Space(2)

    def get_dataset(self):
        rng = np.random.default_rng(0)
        return {"observations": rng.normal(1.0, 2.0, size=(500, 4)).astype(np.float32),
                "actions": rng.normal(0.0, 0.5, size=(500, 2)).astype(np.float32),
                "rewards": rng.normal(size=500).astype(np.float32),
                "terminals": np.zeros(500, dtype=bool)}


def tiny_networks(unet_class, seed: int = 0):
    """(value_function, unet) with random weights from ``seed``."""
    torch.manual_seed(seed)
    return unet_class(**VALUE).eval(), unet_class(**UNET).eval()


def copy_weights(source, target):
    """Load one implementation's weights into the other (the same diffusers key names)."""
    target.load_state_dict(source.state_dict(), strict=True)
    return target
