"""`cosyvoice-serve bench`: the service against upstream's way of serving, on the same workload.

The workload is fixed and seeded: 16 English sentences, request i speaks sentence i mod 16 with
seed i, in one of two workloads: `sft` (a pretrained voice by id) or `zero-shot` (a 3 s prompt
recording and its transcript uploaded with every request, so every request pays the prompt's
feature extraction). It runs at each concurrency (default 1, 4, 8, 16) in both streaming and
whole-file mode through:

- the service: started on a private local Ray instance (or given by `--url`) and driven over
  HTTP by `concurrency` clients, each sending its next request when its last one has finished;
- optionally the server at `--compare-url`, in this service's protocol or upstream's
  (`--compare-protocol upstream`: CosyVoice's own FastAPI server), so a user can set the service
  against the one they run now;
- the baseline: upstream's `cosyvoice` modules driven the way upstream's FastAPI server drives
  them, in one process with one model copy, each concurrent request on its own thread, no batching.

Per mode and concurrency it reports throughput (seconds of audio per wall-clock second), time to
first audio p50/p95 (streaming: first PCM byte after the WAV header; whole mode: the full response
time), real-time factor (median of processing time / audio seconds), peak RSS (the service: summed
over all its Ray processes; the baseline: its process), and the service's ratios to the others.
It also reports start to ready (the service: by phase and by replica, from Ray's logs; the
baseline: process start, imports, model load), each side's warm-up request, PSS per process once
ready and after the run, and the HTTP + Ray overhead per request: at concurrency 1 in whole mode,
the median of service latency minus the latency of the same request (same text and seed, so the
same audio) through the pipeline's functions called in-process. The last line of stdout is one
JSON object with all of it.

    cosyvoice-serve bench --quick                  # CI short mode: tiny twin, concurrency 1 and 2
    cosyvoice-serve bench --workload zero-shot     # the prompt uploaded with every request
    cosyvoice-serve bench --size real              # full run on the real-size twin
    cosyvoice-serve bench --compare-url http://127.0.0.1:50000 --compare-protocol upstream

Two narrower commands share its model options (`benchmarks.options`):

    cosyvoice-serve bench-soak --requests 500      # memory: each replica's RSS after 50 vs after 500 requests
    cosyvoice-serve bench-chunk-cost --size real   # streamed flow cost per chunk, recomputed vs incremental
"""
