"""Entry point of the schedulers plugin: registers every scheduler by module path (imported on
first use), with short aliases and the sampler names people know from other tools as presets."""

from diffusion_kernel.plugins import lazy_hook

_PKG = "diffusion_kernel_schedulers"

# class name, module, plain aliases, presets (alias -> config values)
SCHEDULERS = [
    ("DDPMScheduler", "ddpm", ("ddpm",), {}),
    ("DDIMScheduler", "ddim", ("ddim",), {}),
    ("DDIMInverseScheduler", "ddim_inverse", ("ddim-inverse",), {}),
    ("PNDMScheduler", "pndm", ("pndm",), {"plms": {"skip_prk_steps": True}}),
    ("LMSDiscreteScheduler", "lms", ("lms",), {"lms-karras": {"use_karras_sigmas": True}}),
    ("EulerDiscreteScheduler", "euler", ("euler",),
     {"euler-karras": {"use_karras_sigmas": True}}),
    ("EulerAncestralDiscreteScheduler", "euler_ancestral", ("euler-a", "euler_a"), {}),
    ("HeunDiscreteScheduler", "heun", ("heun",), {"heun-karras": {"use_karras_sigmas": True}}),
    ("KDPM2DiscreteScheduler", "kdpm2", ("kdpm2", "dpm2"),
     {"dpm2-karras": {"use_karras_sigmas": True}}),
    ("KDPM2AncestralDiscreteScheduler", "kdpm2_ancestral", ("kdpm2-a", "dpm2-a"),
     {"dpm2-a-karras": {"use_karras_sigmas": True}}),
    ("DPMSolverMultistepScheduler", "dpm_solver_multistep", ("dpmsolver", "dpm-solver"), {
        "dpm++2m": {"algorithm_type": "dpmsolver++", "solver_order": 2},
        "dpm++2m-karras": {"algorithm_type": "dpmsolver++", "solver_order": 2,
                           "use_karras_sigmas": True},
        "dpm++2m-sde": {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        "dpm++2m-sde-karras": {"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                               "use_karras_sigmas": True},
        "dpm++3m": {"algorithm_type": "dpmsolver++", "solver_order": 3},
        "dpm++3m-karras": {"algorithm_type": "dpmsolver++", "solver_order": 3,
                           "use_karras_sigmas": True},
    }),
    ("DPMSolverSinglestepScheduler", "dpm_solver_singlestep", ("dpmsolver-singlestep",), {
        "dpm++2s": {"algorithm_type": "dpmsolver++", "solver_order": 2},
        "dpm++2s-karras": {"algorithm_type": "dpmsolver++", "solver_order": 2,
                           "use_karras_sigmas": True},
    }),
    ("UniPCMultistepScheduler", "unipc", ("unipc",),
     {"unipc-karras": {"use_karras_sigmas": True}}),
    ("DEISMultistepScheduler", "deis", ("deis",), {"deis-karras": {"use_karras_sigmas": True}}),
    ("EDMEulerScheduler", "edm_euler", ("edm-euler",), {}),
    ("ScoreSdeVeScheduler", "score_sde_ve", ("score-sde-ve", "sde-ve"), {}),
    ("ScoreSdeVpScheduler", "score_sde_vp", ("score-sde-vp", "sde-vp"), {}),
    ("LCMScheduler", "lcm", ("lcm",), {}),
    ("FlowMatchEulerDiscreteScheduler", "flow_match_euler", ("flow-match-euler",), {}),
    ("IPNDMScheduler", "ipndm", ("ipndm",), {}),
    ("UnCLIPScheduler", "unclip", ("unclip",), {}),
]

register_schedulers = lazy_hook(_PKG, SCHEDULERS)
