"""latentdub: re-lip-sync talking-head video through a pre-trained StyleGAN2's latent space."""

__version__ = "0.1.0"
