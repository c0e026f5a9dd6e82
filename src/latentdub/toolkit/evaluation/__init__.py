"""Evaluation: pairing generated with reference frames, running the registered metrics, tables and reports.

Metric implementations are plugins; :mod:`.measures` holds the numerical
definitions they share. May import :mod:`~latentdub.toolkit.core`,
:mod:`~latentdub.toolkit.media`, :mod:`~latentdub.toolkit.faces` and
:mod:`~latentdub.toolkit.learning` (datasets as references).
"""
