"""What the benchmarks share: one HTTP client with one SSE reader (`client`, `sse`), one
percentile definition (`stats`), one process sampler (`procs`), one report writer (`report`)
and the stack as processes (`stack`).

The benchmarks run as scripts (`python bench/<name>.py`), so `bench/` is on sys.path and they
import this package as `lib` (`from lib.stats import percentile`). Each module imports only
what it needs, so a script that uses `stats` and `report` alone (the GPU summaries) runs
without httpx or psutil.
"""
