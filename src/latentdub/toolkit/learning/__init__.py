"""What learns from footage: Stage 1 training (loop, datasets), Stage 2 tuning (driver), perceptual loss, identity profiles.

The core owns the loops and file formats; the models, their objectives and
algorithms are plugins (a motion model's trainer, a fine-tuner). May import
:mod:`~latentdub.toolkit.core`, :mod:`~latentdub.toolkit.media`,
:mod:`~latentdub.toolkit.faces` and ``latentdub.nets``.
"""
