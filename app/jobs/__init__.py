"""Long recordings: one segment queue shared by every worker on the host.

A long synchronous request and a job are the same thing in the store: a
"work" (one recording, its decode options) and its segments (VAD windows as
16 kHz PCM). Every worker runs a puller (`puller.py`) that claims queued
segments with a lease, feeds them to its own batcher and writes the results
back, so a recording is transcribed by the whole fleet, and a worker that
dies has its segments re-queued. No HTTP passes between workers: no
deadlock, no recursion.

| module | concern |
|---|---|
| `store.py` | the interface the rest codes against, and its records |
| `sqlite_store.py` | the embedded implementation (one SQLite file in WAL mode) |
| `codec.py` | PCM and transcripts to and from what the store keeps |
| `pace.py` | the fleet's measured speed, the deadline that follows the work, refusal |
| `fanout.py` | a long synchronous request: write its segments, wait, assemble |
| `puller.py` | the per-worker thread: heartbeat, claim, transcribe, write back, sweep |
| `prepare.py` | a queued job: decode, VAD, write its segments; assembling a finished work |
"""
