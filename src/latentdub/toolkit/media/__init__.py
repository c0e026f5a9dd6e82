"""Media in and out: streaming video decode/encode through ffmpeg, audio loading and edits, speech phones.

May import :mod:`latentdub.toolkit.core`.
"""
