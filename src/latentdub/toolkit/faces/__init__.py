"""Faces: FFHQ-style alignment (:mod:`.align`), target selection and tracking (:mod:`.track`), masks (:mod:`.masks`).

May import :mod:`latentdub.toolkit.core` and :mod:`latentdub.toolkit.media`.
Detectors and face embedders are plugins, reached through the registry.
"""
