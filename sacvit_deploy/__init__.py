"""sacvit-deploy: deploy SAC-ViT / LF-ViT / CF-ViT early-exit vision transformers."""

__version__ = "0.1.0"

from sacvit_deploy.errors import SacvitError

__all__ = ["SacvitError", "__version__"]
