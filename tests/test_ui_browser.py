"""The web UI in a real browser (Debian's headless Chromium driven by playwright): every page opens, a sample's
highlighted trained tokens count what `tooltune preprocess` counts, a run's loss reaches the chart live, the run
form refuses bad input, and the playground gets a forced tool call from a GGUF model served by `tooltune serve`,
then continues with a tool result; the same turn side by side on two models.

Set TOOLTUNE_UI_SCREENSHOTS=DIR to save a screenshot of each page (docs/ui/*.png come from there)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from ui_support import CHROMIUM, CHROMIUM_FLAGS, SCREENSHOTS, RunningApp, free_port, make_workspace, write_run

from tooltune.ui.server import build_ui

playwright_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} not installed (scripts/install.sh adds Debian's chromium)", allow_module_level=True)

KEY = "ui-test-key"
ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "200"}
DATA_URL = "/ui/data?dataset=glaive_toolcall_en_demo&model=tok&cutoff_len=1024"


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    yield tab
    context.close()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_workspace(tmp_path_factory.mktemp("ui_browser") / "ws")
    write_run(root, "lr-1e-3", [2.4, 1.9, 1.5, 1.3, 1.2, 1.15], eval_loss=1.35, shipped=True)
    write_run(root, "lr-5e-4", [2.4, 2.1, 1.9, 1.7, 1.6, 1.5], config={"learning_rate": 5e-4}, eval_loss=1.6)
    return root


@pytest.fixture(scope="module")
def ui(workspace: Path):
    running = RunningApp(build_ui(str(workspace)))
    yield running
    running.stop()


def shot(page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"))


def preprocess_trained_counts(workspace: Path, out: Path) -> dict[int, int]:
    result = subprocess.run(
        [sys.executable, "-m", "tooltune", "preprocess", "--dataset", "glaive_toolcall_en_demo",
         "--model_name_or_path", str(workspace / "tok"), "--cutoff_len", "1024", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=ENV,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return {row["index"]: sum(1 for label in row["labels"] if label != -100) for row in rows}


def test_data_page_shows_trained_tokens_as_preprocess_counts_them(page, ui: RunningApp, workspace: Path,
                                                                   tmp_path: Path) -> None:
    page.goto(ui.url + DATA_URL)
    page.wait_for_selector(".sample")
    assert page.locator(".sample").count() == 20
    assert "of 299 samples" in page.inner_text("#page-info")  # 300 records, one longer than cutoff_len is skipped
    assert page.locator("#problems").count() == 1 and "over cutoff_len 1024" in page.inner_text("#problems")
    shot(page, "data")
    # Search, then follow the first match to its highlighted tokens.
    page.fill("input[name=q]", "calculate_tip")
    page.click("button[type=submit]")
    page.wait_for_selector("#main:not([data-loading]) .sample")
    matched = page.inner_text("#page-info")
    assert "299 of 299" not in matched and " of 299 samples" in matched
    card = page.locator(".sample").first
    index = int(card.get_attribute("data-index"))
    highlighted = card.evaluate("c => [...c.querySelectorAll('.seg.trained')]"
                                ".reduce((n, s) => n + Number(s.dataset.tokens), 0)")
    assert card.locator("mark.toolcall").count() >= 1 and card.locator(".seg.trained mark.toolcall").count() >= 1
    assert card.locator(".seg.prompt mark.toolresult").count() >= 1  # tool results are shown, never trained
    expected = preprocess_trained_counts(workspace, tmp_path / "pre.jsonl")
    assert highlighted == int(card.get_attribute("data-trained")) == expected[index]
    # Paging: next page of the unfiltered set.
    page.fill("input[name=q]", "")
    page.click("button[type=submit]")
    page.wait_for_selector("#main:not([data-loading]) .sample")
    assert "299 of 299" in page.inner_text("#page-info")
    page.click("button:has-text('next')")
    page.wait_for_function("document.querySelector('#page-info')?.textContent.startsWith('page 2 ')")
    page.wait_for_selector("#main:not([data-loading]) .sample")
    assert int(page.locator(".sample").first.get_attribute("data-index")) >= 20


def test_runs_pages_live_loss_and_compare(page, ui: RunningApp, workspace: Path) -> None:
    page.goto(ui.url + "/ui/runs")
    page.wait_for_selector("#runs-table")
    assert page.locator("#runs-table tbody tr").count() == 2
    shot(page, "runs")
    page.check("input[value='lr-1e-3']")
    page.check("input[value='lr-5e-4']")
    page.click("button:has-text('Compare')")
    page.wait_for_selector("#config-diff")
    assert "learning_rate" in page.inner_text("#config-diff")
    assert "train_loss" in page.inner_text("#metric-diff")
    shot(page, "compare")
    # A run that is training: each line appended to its log reaches the chart without a reload.
    run_dir = write_run(workspace, "live", [2.5, 2.2])
    page.goto(ui.url + "/ui/run?name=live")
    page.wait_for_selector("#stages")
    assert page.get_attribute("#loss-chart", "data-points") == "2"
    log = run_dir / "train" / "trainer_log.jsonl"
    for step, loss in ((3, 2.0), (4, 1.8)):
        with log.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, "loss": loss}) + "\n")
        page.wait_for_function(f"document.querySelector('#loss-chart')?.dataset.points === '{step}'", timeout=5000)
    assert "step 4" in page.inner_text("#live")
    page.goto(ui.url + "/ui/run?name=lr-1e-3")
    page.wait_for_selector("#stages")
    assert "90% (27/30)" in page.inner_text("#eval") and "model-Q4_K_M.gguf" in page.inner_text("#gguf")
    assert "FROM ./quantize/model-Q4_K_M.gguf" in page.inner_text("#modelfile")
    page.wait_for_function("document.querySelector('img.report-chart')?.complete && "
                           "document.querySelector('img.report-chart')?.naturalWidth > 100")
    assert page.get_attribute("#loss-chart", "data-points") == "7"  # 6 training points and the held-out one
    shot(page, "run")


def test_run_form_refuses_bad_fields(page, ui: RunningApp, workspace: Path) -> None:
    page.goto(ui.url + "/ui/start")
    page.wait_for_selector("#run-form")
    assert page.input_value("input[name=learning_rate]") == "0.00005"  # the CLI's default
    page.fill("input[name=name]", "bad")
    page.fill("input[name=dataset]", "glaive_toolcall_en_demo")
    page.fill("input[name=learning_rate]", "fast")
    page.click("button[type=submit]")
    assert "learning_rate" in page.inner_text("#result .error")
    page.fill("input[name=learning_rate]", "1e-3")
    page.fill("input[name=model_name_or_path]", "../../etc")
    page.click("button[type=submit]")
    page.wait_for_function("document.querySelector('#result .error')?.textContent.includes('outside')")
    assert not (workspace / "runs" / "bad").exists()
    shot(page, "start")


@pytest.mark.slow
def test_start_a_tiny_run_and_watch_its_loss_live(page, ui: RunningApp, workspace: Path,
                                                   tiny_llama_dir: Path) -> None:
    shutil.copytree(tiny_llama_dir, workspace / "tiny-model", dirs_exist_ok=True)
    page.goto(ui.url + "/ui/start")
    page.wait_for_selector("#run-form")
    for field, value in {"name": "tiny", "model_name_or_path": "tiny-model", "dataset": "glaive_toolcall_en_demo",
                         "cutoff_len": "512", "max_samples": "12", "lora_rank": "4", "learning_rate": "1e-3",
                         "max_steps": "40", "logging_steps": "1", "save_steps": "1000"}.items():
        page.fill(f"input[name={field}]", value)
    page.click("button[type=submit]")
    page.wait_for_url("**/ui/run?name=tiny")
    # The chart is drawn once the run's first state has been fetched; points then arrive while training runs
    # (pushed, no reload); then stop it from the page.
    page.wait_for_selector("#loss-chart", timeout=60_000)
    page.wait_for_function("Number(document.querySelector('#loss-chart')?.dataset.points) >= 2", timeout=240_000)
    first = int(page.get_attribute("#loss-chart", "data-points"))
    page.wait_for_function(f"Number(document.querySelector('#loss-chart')?.dataset.points) > {first}",
                           timeout=60_000)
    shot(page, "run_live")
    page.click("button:has-text('Stop')")
    deadline = time.monotonic() + 60
    while httpx.get(f"{ui.url}/ui/api/runs/tiny").json()["status"] == "running":
        assert time.monotonic() < deadline, "the run did not stop"
        time.sleep(0.5)
    # Stopped by the stop request itself (SIGTERM, taken as Ctrl-C even where a background shell made SIGINT
    # ignored), not by the SIGKILL fallback: the run recorded the interruption and said how to resume.
    assert httpx.get(f"{ui.url}/ui/api/runs/tiny").json()["stages"]["train"] == "interrupted"
    log = workspace / "runs" / "tiny" / "ui_launch.log"
    while "run the same command again to resume" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the run was killed, not stopped"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def served(workspace: Path, default_gguf: Path):
    """`tooltune serve` (its own process) on the embedded GGUF with an API key; its /ui/ is the same UI."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tooltune", "serve", str(default_gguf), "--port", str(port), "--api-key", KEY,
         "--chat-template", "qwen", "--n-ctx", "2048", "--name", "smol", "--n-threads", "1"],
        cwd=workspace, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "tooltune serve did not start"
        time.sleep(0.3)
    yield url
    process.terminate()
    process.wait(30)


def test_playground_forced_tool_call_then_tool_result(page, served: str) -> None:
    page.goto(served + "/ui/playground")
    page.wait_for_url("**/ui/login?next=*")  # the server's API key applies to its pages
    page.fill("input[name=key]", KEY)
    page.click("button[type=submit]")
    page.wait_for_selector("#send")  # back on the playground once the key is in
    assert page.url == served + "/ui/playground"
    page.select_option("#tool-choice", "get_weather")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "40")  # a short reply keeps the test quick; the call itself is grammar-bound
    page.fill("#user-input", "What is the weather like in Paris right now?")
    page.click("#send")
    card = page.locator(".card.tool-call").first
    card.wait_for(timeout=120_000)
    assert card.get_attribute("data-name") == "get_weather"
    arguments = json.loads(card.locator(".arguments").inner_text())
    assert isinstance(arguments, dict) and isinstance(arguments.get("city"), str) and arguments["city"]
    page.click("text=prompt as rendered")
    assert "<tools>" in page.inner_text(".msg.assistant details.prompt pre")
    shot(page, "playground")
    page.select_option("#tool-choice", "none")
    card.locator(".tool-result").fill('{"city": "Paris", "temperature_c": 18, "sky": "clear"}')
    card.locator(".send-result").click()
    page.locator(".msg.assistant").nth(1).wait_for(timeout=120_000)
    second_prompt = page.locator(".msg.assistant").nth(1).locator("details.prompt pre").text_content()
    assert "<tool_response>" in second_prompt and "temperature_c" in second_prompt
    assert page.locator("#play-status .error").count() == 0


def test_playground_side_by_side(page, workspace: Path, served: str) -> None:
    running = RunningApp(build_ui(str(workspace), model_urls=[f"{served}#smol"], model_api_key=KEY))
    try:
        page.goto(running.url + "/ui/playground")
        page.wait_for_selector("#send")
        page.select_option("#target-b", "0")
        assert page.locator(".chat").count() == 2
        page.select_option("#tool-choice", "required")
        page.fill("#max-tokens", "40")
        page.fill("#user-input", "Weather in Oslo?")
        page.click("#send")
        page.wait_for_function("document.querySelectorAll('.card.tool-call').length === 2", timeout=120_000)
        names = page.eval_on_selector_all(".card.tool-call", "cs => cs.map(c => c.dataset.name)")
        assert names == ["get_weather", "get_weather"]
        shot(page, "playground_side_by_side")
    finally:
        running.stop()
