"""StableEmote: the helper package for a course on Stable Diffusion 1.5 and LoRA.

One module per concept; each notebook imports the helpers it needs and keeps the
idea being taught in the notebook itself.
"""

__version__ = "0.1.0"

# Where the repository lives, for the Colab badges and the setup cell.
REPO_SLUG = "SurAyush/StableEmote"
