"""maskgen benchmarks: what the feature cache buys, measured (issue 6). Never part of the test suite.

Run one with `python -m benchmarks NAME [options]` (NAME in `benchmarks.__main__.BENCHMARKS`, or `all`); each
prints one JSON line per result and appends it to `benchmarks/results.jsonl`. See benchmarks/README.md.
"""
