"""Benchmarks comparing impexec.ClusterExecutor with its peers.

Not part of the test suite.  Run ``python benchmarks/run.py --help`` (or
``python -m benchmarks.run``) from the repository root; see ``benchmarks/README.md``.
"""
