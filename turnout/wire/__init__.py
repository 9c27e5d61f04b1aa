"""Wire formats: SSE framing, OpenAI request validation and response shapes."""
