"""The web page at / in a real headless Chromium, against a real `serve` on the tiny preset."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from helpers import open_model
from mufun_local.llm.llama import Sampling
from mufun_local.options import Request

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (Debian: apt-get install chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (test extra)")
# MUFUN_UPDATE_SCREENSHOT=1 refreshes the README's screenshot from this test
README_SHOT = Path(__file__).resolve().parents[2] / "docs" / "web-page.png"


@pytest.fixture(scope="module")
def page(serve):
    base = serve("--ctx", "2048", "--max-tokens", "16")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        pg = browser.new_page(viewport={"width": 900, "height": 1000})
        pg.goto(base + "/")
        yield pg
        browser.close()


def greedy(model_dir, path, question, max_tokens=16):
    with open_model(model_dir) as model:
        return model.ask(path, question, request=Request(max_tokens, Sampling(temperature=0.0))).text()


def ask_on_page(pg, question):
    n = pg.locator(".msg.assistant, .msg.error").count()
    pg.fill("#question", question)
    pg.click("#send")
    pg.wait_for_function(f"document.querySelectorAll('.msg.assistant, .msg.error').length > {n} && "
                         "!document.getElementById('send').disabled", timeout=60000)
    return pg.locator(".msg.assistant, .msg.error").nth(n)


def test_upload_ask_follow_up_and_errors(page, tiny_q4, audio_dir, tmp_path):
    pg = page
    pg.click("summary")
    pg.fill("#temperature", "0")
    pg.fill("#maxtokens", "16")
    song = audio_dir / "song22k.flac"
    pg.set_input_files("#picker", str(song))
    pg.wait_for_function("document.querySelector('.file .meta').textContent.includes(':')", timeout=20000)
    assert pg.locator(".file .name").first.text_content() == "song22k.flac"

    answer = ask_on_page(pg, "What genre is this?")
    assert "assistant" in answer.get_attribute("class")
    assert answer.text_content() == greedy(tiny_q4, song, "What genre is this?")
    assert pg.locator(".file .sent").first.text_content() == "sent"

    follow = ask_on_page(pg, "And the mood?")
    assert "assistant" in follow.get_attribute("class")
    assert pg.locator(".msg.user").count() == 2

    pg.click("#reset")
    bad = tmp_path / "broken.mp3"
    bad.write_bytes(b"this is not an mp3" * 100)
    pg.set_input_files("#picker", str(bad))
    pg.wait_for_function("document.querySelector('.file .meta').textContent !== 'reading…'", timeout=20000)
    err = ask_on_page(pg, "What genre?")
    assert "error" in err.get_attribute("class")
    assert "audio" in err.text_content().lower()


def test_a_ranked_answer_shows_each_term_with_its_probability(page, tiny_q4, audio_dir, tmp_path):
    """The Answer menu lists the server's built-in vocabularies; choosing one fills in its
    question, and the answer shows the terms as Model.rank ranks them, with their percentages."""
    from mufun_local.tags import BUILTIN, field_question
    pg = page
    pg.click("#reset")
    song = audio_dir / "song22k.flac"
    pg.set_input_files("#picker", str(song))
    pg.wait_for_function("document.querySelector('.file .meta').textContent !== 'reading…'", timeout=20000)
    pg.wait_for_function("document.querySelectorAll('#mode option').length > 2", timeout=20000)
    pg.select_option("#mode", "mood")
    assert pg.input_value("#question") == field_question("mood")
    n = pg.locator(".msg.assistant, .msg.error").count()
    pg.click("#send")
    pg.wait_for_function(f"document.querySelectorAll('.msg.assistant, .msg.error').length > {n} && "
                         "!document.getElementById('send').disabled", timeout=60000)
    answer = pg.locator(".msg.assistant, .msg.error").nth(n)
    assert "assistant" in answer.get_attribute("class")
    with open_model(tiny_q4, n_ctx=2048) as model:
        expected = model.rank(song, field_question("mood"), list(BUILTIN["mood"]))
    shown = answer.locator("ol.ranking li .term").all_text_contents()
    assert shown == [t for t, _ in expected] and len(shown) == len(BUILTIN["mood"])
    assert answer.locator("ol.ranking li .p").first.text_content() == f"{100 * expected[0][1]:.1f} %"
    assert answer.locator("details summary").text_content() == f"{len(expected) - 10} more"
    shot = tmp_path / "page.png"
    pg.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("MUFUN_UPDATE_SCREENSHOT") == "1":
        shutil.copy(shot, README_SHOT)

    pg.select_option("#mode", "custom")
    assert pg.is_visible("#terms")
    pg.fill("#terms", "Rock, Jazz")
    follow = ask_on_page(pg, "Rock or jazz?")
    assert sorted(follow.locator("ol.ranking li .term").all_text_contents()) == ["Jazz", "Rock"]
    pg.select_option("#mode", "")


def test_page_is_keyboard_usable_and_fits_a_phone(page):
    pg = page
    pg.set_viewport_size({"width": 380, "height": 800})
    width = pg.evaluate("document.documentElement.scrollWidth")
    assert width <= 380
    pg.focus("#pick-label")
    pg.keyboard.press("Tab")
    assert pg.evaluate("document.activeElement.tagName") in ("TEXTAREA", "BUTTON", "INPUT")
