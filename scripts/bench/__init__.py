"""The benchmarks behind docs/benchmarks.md: the workers and fleets they start
on their own ports (lab, env), the measurements (http, ceiling, models,
whisper, profile, steps, inprocess, fanout, vad, peers with peer_servers,
gpu), and the document rendered from their figures (doc, doc_sections,
doc_scaling, doc_profile, doc_peers). `scripts/bench.py` is its command line (cli).
"""
