"""The benchmarks behind docs/benchmarks.md: the workers and fleets they start
on their own ports (lab, env), the measurements (http, models, whisper,
profile, steps, inprocess, fanout), and the document rendered from their
figures (doc, doc_profile). `scripts/bench.py` is its command line (cli).
"""
