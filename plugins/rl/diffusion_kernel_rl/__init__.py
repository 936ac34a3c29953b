"""diffusion-kernel-rl: diffusion planning for reinforcement learning (Janner et al. 2022,
"Planning with Diffusion for Flexible Behavior Synthesis"), with a point-mass maze in the style of
D4RL's Maze2D, its data, baselines and a planner that ships with the plugin.

Pipelines are registered with the kernel (``DiffusionPipeline.from_pretrained`` finds them); the
environment, data and evaluation helpers are imported from their modules.
"""
