"""The dubbing pipeline: ``dub`` (footage + speech) and ``animate`` (portrait + speech), and the output timeline.

May import :mod:`~latentdub.toolkit.core`, :mod:`~latentdub.toolkit.media`
and :mod:`~latentdub.toolkit.faces`; components come from the preset.
"""
