"""Text-generation engines behind one interface: llama.cpp for GGUF files, transformers for HF directories.

``tooltune chat``, ``tooltune serve`` and ``tooltune eval`` all go through ``load_engine`` so a prompt is rendered
and decoded the same way whichever file format the model is in.

INTERFACE CONTRACT (implementations are filled in by the serving work; keep these names and signatures):

    @dataclass SamplingParams: max_tokens=256, temperature=0.0, top_p=1.0, top_k=0, seed=0,
                               repeat_penalty=1.0, stop: list[str] = [], grammar: str | None (GBNF text)
    @dataclass Chunk:   text: str                     (one streamed piece of decoded text)
    @dataclass Result:  text, finish_reason ("stop" | "length"), prompt_tokens, completion_tokens,
                        prompt_seconds, decode_seconds, load_seconds
    class Engine:
        name: str                         model file/dir name
        chat_template: str                the model's own Jinja chat template (GGUF metadata or tokenizer)
        bos_token: str; eos_token: str; stop_tokens: list[str]  (end-of-turn strings, e.g. "<|im_end|>")
        context_length: int
        def render(self, messages: list[dict], tools: list[dict] | None, add_generation_prompt=True) -> str
        def tokenize(self, text: str) -> list[int]
        def generate(self, prompt: str, params: SamplingParams) -> Result
        def stream(self, prompt: str, params: SamplingParams) -> Iterator[Chunk]   (then .last_result holds Result)
        def close(self) -> None
    def load_engine(model: str | Path, *, n_ctx: int = 4096, n_threads: int | None = None) -> Engine
"""
