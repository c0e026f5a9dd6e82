"""Batch runs: manifests (:mod:`.manifest`), the journal (:mod:`.journal`), executors (:mod:`.executors`), the driver (:mod:`.run`).

May import every other core subpackage; runs clips through
:func:`latentdub.toolkit.dubbing.pipeline.dub`.
"""
