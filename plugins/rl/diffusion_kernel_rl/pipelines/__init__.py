"""The planning pipelines: value-guided (diffusers' ValueGuidedRLPipeline) and goal-conditioned
(Diffuser's Maze2D planner)."""
