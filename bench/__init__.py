"""Benchmarks against the Kafka read limit, the API quota, a latency bound and a memory bound.

Run them with ``.venv/bin/python -m bench --size quick|full``; see ``bench/README.md``.
"""
