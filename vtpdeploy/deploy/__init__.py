"""Turning a model into artifacts and numbers: model sources, export, runners, bench."""
