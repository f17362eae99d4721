"""Cross-service tests: the whole stack as real processes (scripts/devstack.py), a real
redis-server of their own, the real SmolLM2 model through llama.cpp. Their fixtures (redis_server,
stacks, stack, ...) come from parlance.testing's pytest plugin, like every suite's; their helpers
are imported from parlance.testing."""
