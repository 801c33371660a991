"""GGUF: convert a Hugging Face checkpoint to GGUF, quantize it with llama.cpp, measure the result, and import a GGUF
back into a Hugging Face checkpoint (the embedded default model arrives that way).

Submodules are imported by their users only: ``quantize`` and ``report`` need llama-cpp-python, which the converter
and the importer never touch.
"""
