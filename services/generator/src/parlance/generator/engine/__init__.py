"""Model engines behind the generator: llama.cpp (CPU), scripted (tests, benchmarks), and
vLLM (GPU, imported lazily)."""
