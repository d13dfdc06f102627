"""Benchmarks (run by `make bench`, never by the tests): each bench_*.py exposes run() -> dict."""
