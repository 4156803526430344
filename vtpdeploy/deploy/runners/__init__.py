"""One runner interface for every backend; see base.Runner."""

from .base import Runner, available_backends, make_runner

__all__ = ["Runner", "available_backends", "make_runner"]
