"""Test helpers that need the whole package (differential fuzzing of models against eager PyTorch).

This layer sits on top, beside the API: it may import anything of ours, and nothing imports it.
"""
