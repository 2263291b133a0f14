"""StableEmote: the helper package for a course on Stable Diffusion 1.5 and LoRA.

One module per concept; each notebook imports the helpers it needs and keeps the
idea being taught in the notebook itself.
"""

__version__ = "0.3.0.dev0"

# Where the repository lives (as in pyproject.toml's [project.urls]), for badges and setup cells.
REPO_SLUG = "SurAyush/StableEmote"
