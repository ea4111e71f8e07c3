"""Fan-out benchmark: a load generator, a bare baseline server and a plot.

Run ``python -m twisted_chat.bench --help``; docs/performance.rst explains the
scenarios and how to read the results (always ratios to the bare baseline
measured in the same run).
"""
