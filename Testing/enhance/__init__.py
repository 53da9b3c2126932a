"""Tests of the enhance task (``MedSynthLib.tasks.enhance``), one file per module or concern.

A package, so its test files are named ``enhance.test_*`` (their basenames need not be unique across folders).
"""
