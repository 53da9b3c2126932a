"""The three tasks of MedSynth as pure functions: a Volume in, a frozen result dataclass out.

Each result carries the output volume(s) and a ``report`` dict with at least
``task``, ``method``, ``device``, ``seconds`` and ``warnings`` (a list of strings).
"""
