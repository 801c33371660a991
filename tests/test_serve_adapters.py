"""One base GGUF, two LoRA GGUFs, one `tooltune serve` process: each adapter is its own model name on both APIs,
answers exactly as llama.cpp does for base + that adapter, and requests switch adapters without cross-talk, with the
one-at-a-time runner and with `--parallel` batching."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tooltune.commands.serve import ServeError, build_server

pytest.importorskip("llama_cpp")

BASE, TOOL_A, TOOL_B = "base", "tool-a", "tool-b"
PROMPTS = ["<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nBook a table for two.<|im_end|>\n<|im_start|>assistant\n"]
GREEDY = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": 12}


@pytest.fixture(scope="module")
def lora_files(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from test_gguf_adapter import make_adapter

    from tooltune.gguf.adapter import convert_adapter
    from tooltune.gguf.convert import convert_to_gguf

    root = tmp_path_factory.mktemp("serve_adapters")
    base = convert_to_gguf(tiny_llama_dir, root / "base.gguf", "f16")
    files = {BASE: base}
    for name, seed in ((TOOL_A, 11), (TOOL_B, 22)):  # different random non-zero B: different answers
        # rsLoRA scales B by alpha/sqrt(r) instead of alpha/r: a stronger push off the base's degenerate greedy text
        adapter_dir = make_adapter(tiny_llama_dir, root / f"{name}-peft", seed=seed, use_rslora=True)
        files[name] = convert_adapter(adapter_dir, base, root / f"{name}.gguf", "f16").path
    return files


@pytest.fixture(scope="module")
def expected(lora_files: dict[str, Path]) -> dict[tuple[str, int], str]:
    """What llama.cpp itself answers (greedy) for the base alone and for base + each adapter (Llama(lora_path=))."""
    from llama_cpp import Llama

    answers = {}
    for name in (BASE, TOOL_A, TOOL_B):
        lora = {} if name == BASE else {"lora_path": str(lora_files[name])}
        llm = Llama(model_path=str(lora_files[BASE]), n_ctx=256, n_threads=1, verbose=False, **lora)
        for index, prompt in enumerate(PROMPTS):
            out = llm.create_completion(prompt, max_tokens=GREEDY["num_predict"], temperature=0.0,
                                        repeat_penalty=1.0, stop=["<|im_end|>", "<|endoftext|>"])
            answers[(name, index)] = out["choices"][0]["text"]
        llm.close()
    # The adapters really change the answers, differently from each other.
    assert len({(answers[(n, 0)], answers[(n, 1)]) for n in (BASE, TOOL_A, TOOL_B)}) == 3, answers
    return answers


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    command = [sys.executable, "-m", "tooltune", "serve", *args, "--port", str(port), "--n-ctx", "256",
               "--n-threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "NO_COLOR": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            if httpx.get(url, timeout=1).text == "Ollama is running":
                return process, url
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server did not come up"
        time.sleep(0.2)


@pytest.fixture(scope="module", params=["serial-modelfile", "parallel-4"])
def served(request: pytest.FixtureRequest, lora_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """One runner decoding one request at a time, with tool-a from a Modelfile's ADAPTER; and a `--parallel 4`
    runner batching requests, both adapters from --lora."""
    if request.param == "serial-modelfile":
        modelfile = tmp_path_factory.mktemp("mf") / "Modelfile"
        modelfile.write_text(f"FROM {lora_files[BASE]}\nADAPTER {lora_files[TOOL_A]}\n")
        args = ["--modelfile", str(modelfile), "--name", TOOL_A, "--lora", f"{TOOL_B}={lora_files[TOOL_B]}"]
    else:
        args = [str(lora_files[BASE]), "--parallel", "4", "--lora", f"{TOOL_A}={lora_files[TOOL_A]}",
                "--lora", f"{TOOL_B}={lora_files[TOOL_B]}"]
    process, url = _start(args)
    yield url
    process.terminate()
    process.wait(20)


def _generate(url: str, model: str, index: int, **options: int) -> str:
    import ollama

    reply = ollama.Client(host=url).generate(model=model, prompt=PROMPTS[index], raw=True,
                                             options=GREEDY | options)
    assert reply.model == model
    return reply.response


def test_every_name_listed_and_answers_like_llama_cpp_with_that_adapter(
        served: str, expected: dict[tuple[str, int], str], lora_files: dict[str, Path]) -> None:
    import ollama
    import openai

    listed = {m.model for m in ollama.Client(host=served).list().models}
    assert listed == {f"{n}:latest" for n in (BASE, TOOL_A, TOOL_B)}
    client = openai.OpenAI(base_url=f"{served}/v1", api_key="unused")
    assert {m.id for m in client.models.list().data} == {BASE, TOOL_A, TOOL_B}
    for name in (BASE, TOOL_A, TOOL_B, BASE):  # back to the base: the adapters were cleared
        assert _generate(served, name, 0) == expected[(name, 0)], name
    # num_ctx reopens the one-at-a-time context (a new llama.cpp model): the adapters come back with it.
    assert _generate(served, TOOL_B, 1, num_ctx=128) == expected[(TOOL_B, 1)]
    assert _generate(served, TOOL_A, 1) == expected[(TOOL_A, 1)]
    shown = ollama.Client(host=served).show(TOOL_B)
    assert f"ADAPTER {lora_files[TOOL_B]}" in shown.modelfile
    # The OpenAI API picks the adapter by `model` too: its answer is the Ollama chat answer of the same model.
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    chats = {}
    for name in (TOOL_A, TOOL_B, BASE):
        completion = client.chat.completions.create(model=name, messages=messages, temperature=0, max_tokens=12)
        assert completion.model == name
        chats[name] = completion.choices[0].message.content
        ollama_chat = ollama.Client(host=served).chat(model=f"{name}:latest", messages=messages,
                                                      options={"temperature": 0, "num_predict": 12})
        assert ollama_chat.message.content == chats[name], name
    assert len(set(chats.values())) == 3, chats


def test_four_concurrent_clients_switching_adapters_get_no_cross_talk(
        served: str, expected: dict[tuple[str, int], str]) -> None:
    names = [BASE, TOOL_A, TOOL_B]
    # Each client walks the models in its own order, so requests for different adapters overlap all the time.
    plans = [[(names[(client + step) % 3], (client + step) % 2) for step in range(4)] for client in range(4)]

    def run(plan: list[tuple[str, int]]) -> list[tuple[str, int, str]]:
        return [(name, index, _generate(served, name, index)) for name, index in plan]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = [row for rows in pool.map(run, plans) for row in rows]
    wrong = [(name, index, text) for name, index, text in results if text != expected[(name, index)]]
    assert not wrong, wrong


def test_unknown_model_is_each_apis_404(served: str) -> None:
    import ollama
    import openai

    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=served).generate(model="tool-c", prompt="hi", raw=True)
    assert info.value.status_code == 404 and "tool-c" in info.value.error and TOOL_A in info.value.error
    client = openai.OpenAI(base_url=f"{served}/v1", api_key="unused")
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="tool-c", messages=[{"role": "user", "content": "hi"}])
    assert not_found.value.body["code"] == "model_not_found"


def test_bad_adapters_are_refused_before_the_server_starts(lora_files: dict[str, Path], default_gguf: Path,
                                                           tmp_path: Path) -> None:
    base, tool_a = lora_files[BASE], lora_files[TOOL_A]
    cases = [
        (base, [f"x={tmp_path / 'missing.gguf'}"], "missing.gguf: no such adapter file"),
        (base, [f"x={tmp_path}"], "is a directory"),
        (base, ["no-equals-sign"], "expected NAME=ADAPTER.gguf"),
        (base, [f"{TOOL_A}={tool_a}", f"{TOOL_A}:latest={tool_a}"], "already used by --lora tool-a="),
        (base, [f"{BASE}={tool_a}"], "already used by the base model"),
        (base, [f"bad name={tool_a}"], "is not a model name"),
        # An adapter made for another base: the embedded SmolLM2-135M is a llama too, with other shapes.
        (default_gguf, [f"x={tool_a}"], "the adapter was made for another base model"),
        (base, [f"x={base}"], "not 'adapter'"),
    ]
    for model, lora, message in cases:
        with pytest.raises(ServeError, match=message) as info:
            build_server(str(model), lora=lora)
        assert "--lora" in str(info.value), info.value
    # The eval target for base + adapter (the pipeline's adapter rows) refuses the same mismatch.
    from tooltune.eval.targets import TargetError, open_target

    with pytest.raises(TargetError, match="another base model"):
        open_target(f"{default_gguf}#{tool_a}")
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {default_gguf}\nADAPTER {tool_a}\n")
    with pytest.raises(ServeError, match="Modelfile: ADAPTER: .*another base model"):
        build_server(None, modelfile=str(modelfile))


def test_cli_refuses_lora_with_vllm_and_takes_the_dashed_spellings(lora_files: dict[str, Path]) -> None:
    from typer.testing import CliRunner

    from tooltune.cli import app

    result = CliRunner().invoke(app, ["serve", str(lora_files[BASE]), "--engine", "vllm",
                                      "--lora", f"{TOOL_A}={lora_files[TOOL_A]}"])
    assert result.exit_code != 0 and "--enable-lora" in str(result.exception), result.output
    # The option reaches the checks under each spelling (LLaMA-Factory's underscore one too).
    for flag in ("--lora", "--lora-adapter", "--lora_adapter"):
        result = CliRunner().invoke(app, ["serve", str(lora_files[BASE]), flag, f"{BASE}={lora_files[TOOL_A]}"])
        assert result.exit_code != 0 and "already used by the base model" in str(result.exception), result.output
