"""The CGIHost tests' fixtures (defined in host/hostkit.py)."""

from host.hostkit import cgi_dir, no_leaks, subreaper

__all__ = ["cgi_dir", "no_leaks", "subreaper"]
