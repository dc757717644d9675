"""`cosyvoice-serve bench`: the service against upstream's way of serving, on the same workload.

The workload is fixed and seeded (16 English sentences; request i speaks sentence i mod 16 with
seed i, sft mode, pretrained voice). It runs at each concurrency (default 1, 4, 8, 16) in both
streaming and whole-file mode through:

- the service: started on a private local Ray instance (or given by `--url`) and driven over
  HTTP by `concurrency` clients, each sending its next request when its last one has finished;
- the baseline: upstream's `cosyvoice` modules driven the way upstream's FastAPI server drives
  them, in one process with one model copy, each concurrent request on its own thread, no batching.

Per mode and concurrency it reports throughput (seconds of audio per wall-clock second), time to
first audio p50/p95 (streaming: first PCM byte after the WAV header; whole mode: the full response
time), real-time factor (median of processing time / audio seconds), peak RSS (the service: summed
over all its Ray processes; the baseline: its process), and service / baseline ratios. It also
reports the HTTP + Ray overhead per request: at concurrency 1 in whole mode, the median of service
latency minus the latency of the same request (same text and seed, so the same audio) through the
pipeline's functions called in-process. The last line of stdout is one JSON object with all of it.

    cosyvoice-serve bench --quick                  # CI short mode: tiny twin, concurrency 1 and 2
    cosyvoice-serve bench                          # full run on the tiny twin
    cosyvoice-serve bench --size real --dtype bf16 # full run on the real-size twin, bf16 on CPU

Two narrower commands share its model options (`benchmarks.options`):

    cosyvoice-serve bench-soak --requests 500      # memory: each replica's RSS after 50 vs after 500 requests
    cosyvoice-serve bench-chunk-cost --size real   # streamed flow cost per chunk, recomputed vs incremental
"""
