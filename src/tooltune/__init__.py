"""tooltune: fine-tune an open LLM to call your tools, then ship it (GGUF, Ollama, OpenAI API, vLLM) and measure it."""

__version__ = "0.1.0"
