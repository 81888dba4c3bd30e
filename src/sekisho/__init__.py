"""sekisho — a self-hosted sovereign AI gateway.

A 関所 (sekisho) was a checkpoint on the old highways: whatever crossed a border passed it, was
inspected, and was written down. This package is that checkpoint for AI traffic.
"""

__version__ = "0.1.0"
