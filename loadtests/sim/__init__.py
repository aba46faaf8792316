"""Cluster simulator: the scheduler's own policy functions against a cost model of a GPU cluster.

Sits beside the real load-test replay in ``loadtests/``: it reads the same traces and writes the
same ``requests.jsonl`` records, so one report module reads both. No Ray imports.
"""
