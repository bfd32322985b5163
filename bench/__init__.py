"""Benchmarks of runa-message against FastStream, broadcaster and the raw client libraries.

Run ``python -m bench --help``. Every contender runs on the same local brokers in the same
run, alternating, for several rounds; medians are reported as a table, JSON and a chart.
"""
