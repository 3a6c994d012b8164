"""Warm mode's tests: the host tests' leak checks (descriptors, children) apply here too."""

from host.hostkit import no_leaks, subreaper

__all__ = ["no_leaks", "subreaper"]
