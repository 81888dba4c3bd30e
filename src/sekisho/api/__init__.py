"""The HTTP surface: OpenAI-compatible routes, operations endpoints. Knows nothing of policy."""
