"""The web UI's endpoints over real HTTP: workspace confinement (path traversal in every field that names a file),
server-side validation of every form, the API key on pages and endpoints, run pages and the live loss stream."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from ui_support import RunningApp, make_workspace, write_run

from tooltune.ui.server import build_ui

KEY = "s3cret-key"
DATA = {"dataset": "glaive_toolcall_en_demo", "model": "tok", "cutoff_len": "1024"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_workspace(tmp_path_factory.mktemp("ui_ws") / "ws")
    outside = root.parent / "secret.json"
    outside.write_text(json.dumps([{"messages": [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "secret"}]}]), encoding="utf-8")
    (root / "evil").mkdir()
    (root / "evil" / "dataset_info.json").write_text(json.dumps({"leak": {"file_name": str(outside),
                                                                          "formatting": "openai"}}), encoding="utf-8")
    os.symlink(outside, root / "link.json")
    alpha = write_run(root, "alpha", [2.0, 1.5, 1.2], eval_loss=1.4)
    from tooltune.pipeline.report import plot_eval

    plot_eval([{"model": "base", "cases": 4, "format_valid": 1, "right_name": 1, "args_match": 0}], alpha / "eval.png")
    write_run(root, "beta", [2.1, 1.1], config={"learning_rate": 5e-4})
    return root


@pytest.fixture(scope="module")
def server(workspace: Path):
    running = RunningApp(build_ui(str(workspace)))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def keyed(workspace: Path):
    running = RunningApp(build_ui(str(workspace), api_key=KEY))
    yield running
    running.stop()


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("data/summary", DATA | {"dataset": "../secret.json"}),
        ("data/summary", DATA | {"dataset": "/etc/hosts.json"}),
        ("data/summary", DATA | {"dataset": "link.json"}),  # a symlink in the workspace pointing out of it
        ("data/summary", DATA | {"dataset": "leak", "dataset_dir": "evil"}),  # a registry entry pointing out
        ("data/summary", DATA | {"dataset_dir": "../.."}),
        ("data/summary", DATA | {"model": "../../"}),
        ("runs/..%2F..%2Fetc", {}),
        ("runs/..", {}),
        ("compare", {"left": "alpha", "right": "../alpha"}),
        ("runs/.hidden/loss-stream", {}),
        ("runs/alpha/image/manifest.json", {}),
        ("runs/alpha/image/..%2F..%2F..%2Fsecret.json", {}),
    ],
)
def test_nothing_outside_the_workspace_is_readable(server: RunningApp, path: str, params: dict[str, str]) -> None:
    response = httpx.get(f"{server.url}/ui/api/{path}", params=params)
    assert response.status_code in (400, 403, 404), response.text
    body = response.json()
    assert "error" in body and "secret" not in json.dumps(body).replace("secret.json", "")


def test_static_files_cannot_be_escaped(server: RunningApp) -> None:
    for name in ("..%2Fapp.py", "..%2F..%2Fserve%2Fapp.py", ".hidden.js", "app.py"):
        assert httpx.get(f"{server.url}/ui/static/{name}").status_code == 404
    assert httpx.get(f"{server.url}/ui/static/app.js").status_code == 200


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"name": "../escape", "dataset": "glaive_toolcall_en_demo"}, "name"),
        ({"name": "ok", "dataset": "glaive_toolcall_en_demo", "learning_rate": "fast"}, "learning_rate"),
        ({"name": "ok", "dataset": "glaive_toolcall_en_demo", "lora_rank": "0"}, "lora_rank"),
        ({"name": "ok", "dataset": "glaive_toolcall_en_demo", "num_train_epochs": "nan"}, "num_train_epochs"),
        ({"name": "ok", "dataset": "glaive_toolcall_en_demo", "quantize": "Q9_X"}, "Q9_X"),
        ({"name": "ok", "dataset": "glaive_toolcall_en_demo", "model_name_or_path": "../../model"}, "outside"),
        ({"name": "ok", "dataset": "../data.json"}, "outside"),
        ({"name": "ok", "dataset": "glaive_toolcall_en_demo", "output_dir": "/tmp/x"}, "output_dir"),
        ({"name": "ok"}, "dataset"),
        ({"name": "ok", "dataset": "leak", "dataset_dir": "evil"}, "outside"),  # registry entry pointing out
    ],
)
def test_run_form_is_validated_on_the_server(server: RunningApp, workspace: Path, form: dict[str, str],
                                             message: str) -> None:
    response = httpx.post(f"{server.url}/ui/api/runs", json=form)
    assert response.status_code in (400, 403), response.text
    assert message in response.json()["error"]
    assert not (workspace / "runs" / "ok").exists()


@pytest.mark.parametrize(
    ("params", "message"),
    [({"cutoff_len": "-5"}, "cutoff_len"), ({"template": "nope"}, "template"), ({"cutoff_policy": "cut"}, "policy"),
     ({"dataset": ""}, "dataset")],
)
def test_data_query_is_validated(server: RunningApp, params: dict[str, str], message: str) -> None:
    response = httpx.get(f"{server.url}/ui/api/data/summary", params=DATA | params)
    assert response.status_code == 400 and message in response.json()["error"]


def test_playground_request_is_validated_and_only_reaches_loopback(server: RunningApp) -> None:
    cases = [
        ({"target": {"url": "http://10.0.0.1:11434"}, "messages": [{"role": "user", "content": "x"}]}, "this machine"),
        ({"target": {"url": "file:///etc/passwd"}, "messages": [{"role": "user", "content": "x"}]}, "expected"),
        ({"target": {"url": "http://127.0.0.1:1"}, "messages": []}, "messages"),
        ({"target": {"url": "http://127.0.0.1:1"}, "messages": [{"role": "user", "content": "x"}],
          "tools": [{"description": "no name"}]}, "tools"),
        ({"target": {"url": "http://127.0.0.1:1"}, "messages": [{"role": "user", "content": "x"}],
          "options": {"temperature": "hot"}}, "temperature"),
    ]
    for body, message in cases:
        response = httpx.post(f"{server.url}/ui/api/chat", json=body)
        assert response.status_code == 400 and message in response.json()["error"], (body, response.text)
    assert httpx.post(f"{server.url}/ui/api/chat", content=b"[1, 2").status_code == 400


def test_api_key_guards_pages_and_endpoints(keyed: RunningApp) -> None:
    with httpx.Client(base_url=keyed.url) as client:
        assert client.get("/ui/api/runs").status_code == 401
        page = client.get("/ui/data")
        assert page.status_code == 303 and page.headers["location"] == "/ui/login?next=%2Fui%2Fdata"
        assert client.get("/ui/api/runs", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert client.post("/ui/login", data={"key": "wrong"}).status_code == 401
        assert client.get("/ui/api/runs").status_code == 401
        login = client.post("/ui/login", data={"key": KEY})
        assert login.status_code == 303 and "httponly" in login.headers["set-cookie"].lower()
        assert KEY not in login.headers["set-cookie"]
        assert client.get("/ui/api/runs").status_code == 200 and client.get("/ui/data").status_code == 200


def test_login_returns_to_the_page_asked_for_and_nowhere_else(keyed: RunningApp) -> None:
    with httpx.Client(base_url=keyed.url) as client:
        asked = client.get("/ui/run", params={"name": "alpha"})
        assert asked.status_code == 303 and asked.headers["location"] == "/ui/login?next=%2Fui%2Frun%3Fname%3Dalpha"
        form = client.get(asked.headers["location"]).text
        assert '<input type="hidden" name="next" value="/ui/run?name=alpha">' in form
        wrong = client.post("/ui/login", data={"key": "wrong", "next": "/ui/run?name=alpha"})
        assert wrong.status_code == 401 and 'value="/ui/run?name=alpha"' in wrong.text  # kept for the retry
        login = client.post("/ui/login", data={"key": KEY, "next": "/ui/run?name=alpha"})
        assert login.status_code == 303 and login.headers["location"] == "/ui/run?name=alpha"
        # Off-site or out-of-UI targets fall back to the data page (no open redirect), and markup is escaped.
        for target in ("https://evil.example/ui/x", "//evil.example/ui/x", "/\\evil.example", "/ui/../etc/passwd",
                       "/ui/./data", "/api/chat", "/ui/login", "javascript:alert(1)", "/ui/data\r\nSet-Cookie: x=1"):
            response = client.post("/ui/login", data={"key": KEY, "next": target})
            assert response.status_code == 303 and response.headers["location"] == "/ui/data", target
            assert "evil" not in client.get("/ui/login", params={"next": target}).text, target
        quoted = client.get("/ui/login", params={"next": '/ui/data?q="><script>'}).text
        assert "<script>" not in quoted and "&quot;&gt;&lt;script&gt;" in quoted


def test_runs_list_detail_and_compare(server: RunningApp) -> None:
    runs = httpx.get(f"{server.url}/ui/api/runs").json()["runs"]
    assert {r["name"] for r in runs} == {"alpha", "beta"} and all(r["status"] == "done" for r in runs)
    alpha = httpx.get(f"{server.url}/ui/api/runs/alpha").json()
    assert alpha["loss"]["train"] == [[1, 2.0], [2, 1.5], [3, 1.2]] and alpha["loss"]["eval"] == [[3, 1.4]]
    assert [s["name"] for s in alpha["stage_rows"]] == ["preview", "train"]
    assert alpha["stage_rows"][1]["peak_rss_bytes"] == 900 << 20
    assert alpha["images"] == ["eval.png"]
    image = httpx.get(f"{server.url}/ui/api/runs/alpha/image/eval.png")
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    diff = httpx.get(f"{server.url}/ui/api/compare", params={"left": "alpha", "right": "beta"}).json()
    assert [d["key"] for d in diff["config_diff"]] == ["learning_rate"]
    figures = {d["key"]: (d["left"], d["right"]) for d in diff["metric_diff"]}
    assert figures["train_loss"] == (pytest.approx(4.7 / 3), pytest.approx(1.6))


def test_loss_stream_pushes_each_new_log_line(server: RunningApp, workspace: Path) -> None:
    run_dir = write_run(workspace, "gamma", [3.0])
    log = run_dir / "train" / "trainer_log.jsonl"
    received: list[dict] = []
    done = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", f"{server.url}/ui/api/runs/gamma/loss-stream", params={"after": 1},
                          timeout=20) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    received.extend(json.loads(line[6:])["records"])
                    if len(received) >= 2:
                        done.set()
                        return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    time.sleep(0.3)
    for step, loss in ((2, 2.5), (3, 2.25)):
        with log.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, "loss": loss}) + "\n")
        time.sleep(0.2)
    assert done.wait(10), received
    assert [(r["step"], r["loss"]) for r in received] == [(2, 2.5), (3, 2.25)]


def test_playground_accepts_the_three_tool_shapes() -> None:
    from tooltune.ui.playground import build_request

    shapes = [
        {"type": "function", "function": {"name": "f", "description": "d",
                                          "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}},
        {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}},
        {"name": "f", "description": "d", "parameters": [{"name": "x", "description": "an x", "required": True}]},
    ]
    for shape in shapes:
        messages, tools, choice, options = build_request({
            "messages": [{"role": "user", "content": "hi"}], "tools": [shape], "tool_choice": "f",
            "system": "be brief", "options": {"temperature": "0.5", "max_tokens": "", "seed": 3}})
        assert tools[0]["type"] == "function" and tools[0]["function"]["name"] == "f"
        assert tools[0]["function"]["parameters"]["properties"]["x"]["type"] == "string"
        assert choice == {"type": "function", "function": {"name": "f"}}
        assert messages[0] == {"role": "system", "content": "be brief"} and options == {"temperature": 0.5, "seed": 3}


def test_loss_stream_resets_when_the_log_is_cut_back(server: RunningApp, workspace: Path) -> None:
    write_run(workspace, "resumed", [3.0, 2.5])  # the page had seen 4 lines; a resume cut the log back to 2
    with httpx.stream("GET", f"{server.url}/ui/api/runs/resumed/loss-stream", params={"after": 4},
                      timeout=20) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                break
    assert event["reset"] is True and [r["step"] for r in event["records"]] == [1, 2] and event["line"] == 2


def test_a_run_whose_process_was_killed_is_not_shown_running(tmp_path: Path) -> None:
    """The manifest says which process writes it; a stage left "running" by a process that is gone (the Stop button's
    SIGKILL fallback, an OOM kill) shows as interrupted — resumable — instead of running forever."""
    import subprocess
    import sys

    from tooltune.ui.runs import process_alive, run_overview

    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits, not reaped yet
    deadline = time.monotonic() + 30
    while process_alive(zombie.pid):
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.05)
    assert process_alive(os.getpid()) and not process_alive(exited.pid)
    zombie.wait()

    stages = {"preview": {"status": "done"}, "train": {"status": "running"}}
    for pid, status in ((os.getpid(), "running"), (exited.pid, "interrupted"), (None, "running")):
        run_dir = tmp_path / f"run-{status}-{pid}"
        run_dir.mkdir()
        (run_dir / "manifest.json").write_text(json.dumps({"stages": stages, **({"pid": pid} if pid else {})}))
        overview = run_overview(run_dir)
        assert overview["status"] == status, pid
        assert overview["stages"] == {"preview": "done", "train": status}
