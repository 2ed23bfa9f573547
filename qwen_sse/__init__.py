"""qwen-sse: an async, SDK-free streaming client for Qwen (DashScope) and OpenAI-compatible APIs."""
