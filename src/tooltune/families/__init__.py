"""The model's text interface, per model family: one place answers "what text does the model see, and how is its
reply read?".

    family.py    Family records (call syntax, end-of-turn markers, reasoning, shipped template, vLLM flags): FAMILIES
    detect.py    which family a template, tokenizer or GGUF belongs to
    registry.py  named templates: resolve(name | Jinja file | model folder) -> ResolvedTemplate(source, family)
    problems.py  what a template loses from a tool conversation (tools ignored, calls dropped, system dropped)
    parsers.py   streaming reply parsers per call syntax, reasoning returned separately
    stops.py     end-of-turn markers: stop strings for decoding and the end-of-turn token merge writes as EOS
    respond.py   respond(engine, conversation, tools, options, tool_choice) -> Reply
    ollama.py    Ollama Modelfile TEMPLATE/RENDERER/PARSER per family and Ollama's view of tools
    vllm.py      vLLM launch flags per family

Training layouts built on these live in ``tooltune.templates`` (``--template qwen | jinja | <family>``).
Submodules are imported where used, so importing this package stays cheap and free of cycles.
"""
