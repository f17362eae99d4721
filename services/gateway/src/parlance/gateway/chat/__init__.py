"""POST /v1/chat/completions, laid out like vLLM's entrypoints/openai/chat_completion: the router
(api_router), the schema (protocol), the flow (serving) and its stages."""
