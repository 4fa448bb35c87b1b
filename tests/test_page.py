"""The chat page (chatgpt_course/static/chat.html) in a real headless Chromium, driven by Selenium, against the real
server (`serve.make_app`) on a free loopback port with a tiny random chat model: a reply streams in and equals the
API's non-streamed reply at temperature 0; Shift+Enter is a newline and Enter sends; text is shown as text, never HTML;
Stop ends a stream part way; New chat clears the conversation; a thumb writes a rating and regenerate's choice writes a
choice into the feedback store (07d), read back with `feedback`; the model's name and version are shown; an API error
is shown in the page; the page waits for a model still loading, and sends the API key typed in its settings.
Skips, saying why, only when no Chromium or chromedriver can be had."""
import json, shutil, urllib.request
from dataclasses import asdict

import pytest

pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

WAIT_S = 30  # the longest any one step may take on a loaded 2-core machine (a bound, not a timing assertion)


# ---- fixtures: a tiny model, the server on a free loopback port, and one headless Chromium

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    "A tiny random GPT with the GPT-2 chat tokenizer: its replies are noise, which is all a page test needs."
    from chatgpt_course.checkpoint import save_checkpoint
    from chatgpt_course.core import seed_everything
    from chatgpt_course.model import GPT, GPTConfig
    from chatgpt_course.tokenizer import load_tokenizer
    cfg = GPTConfig(block_size=128, vocab_size=load_tokenizer("gpt2-chat").n_vocab, n_layer=1, n_head=2, n_embd=16)
    seed_everything(0)
    run = tmp_path_factory.mktemp("page-model") / "tiny"
    save_checkpoint(run, 0, GPT(cfg), meta={"config": {"model": asdict(cfg)}, "tokenizer": "gpt2-chat"})
    return run


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    "The real server (08a's make_app over 08b's Backend) on a free loopback port, with its feedback store; its model's id."
    from chatgpt_course.backend import Backend
    from chatgpt_course.serve import ServerThread, make_app
    db = tmp_path_factory.mktemp("page-feedback") / "feedback.sqlite"
    with Backend(model_dir) as backend, ServerThread(make_app(backend, feedback_db=db)) as s:
        s.db = db
        card = api(s, "/v1/models")["data"][0]
        s.model, s.version = card["id"], card["version"]
        yield s


def _browser_or_skip():
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip(f"no browser for the page test: chromium {chromium or 'missing'}, chromedriver {driver_path or 'missing'} "
                    "(apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--window-size=1000,760"):
        opts.add_argument(a)
    try: return webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)  # a path given: nothing downloaded
    except WebDriverException as e: pytest.skip(f"chromium {chromium} and chromedriver {driver_path} did not start: {e.msg}")


@pytest.fixture(scope="module")
def browser():
    driver = _browser_or_skip()
    yield driver
    driver.quit()


# ---- helpers: open the page, send a message, wait for the page's state, call the API directly

def open_page(browser, server, **query):
    browser.get(server.url + "/?" + "&".join(f"{k}={v}" for k, v in query.items()))
    wait(browser, lambda d: d.find_element(By.ID, "model").text not in ("", "connecting\u2026"))

def wait(browser, until, timeout=WAIT_S):
    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(until)

def send(browser, text):
    box = browser.find_element(By.ID, "input")
    box.send_keys(text); box.send_keys(Keys.ENTER)

def replies(browser): return browser.find_elements(By.CSS_SELECTOR, "#log .msg.assistant")

def last_reply_done(browser, states=("done",)):
    "Wait until the last reply has finished (its data-state in `states`) and the page is idle; the reply element."
    wait(browser, lambda d: replies(d) and replies(d)[-1].get_attribute("data-state") in states
         and d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle")
    return replies(browser)[-1]

def text_of(el): return el.find_element(By.CLASS_NAME, "text").get_property("textContent")

def api(server, path, body=None):
    req = urllib.request.Request(server.url + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=WAIT_S) as r: return json.loads(r.read())

# Chrome's own network throttling holds a streamed body back and delivers it at the end, so a test slows streams in the
# page instead: fetch is wrapped so that a chat completion's body comes in slices of SIZE bytes, DELAY ms apart. The
# slices cut events (and UTF-8 characters) anywhere, as a real network may; an abort ends the stream as fetch's does.
SLOW_FETCH = """
const [SIZE, DELAY] = arguments, realFetch = window.fetch;
window.fetch = async (url, opts = {}) => {
  const res = await realFetch(url, opts);
  if (!String(url).includes("/chat/completions") || !res.ok) return res;
  const reader = res.body.getReader(), signal = opts.signal;
  const body = new ReadableStream({async pull(ctrl) {
    const {value, done} = await reader.read();
    if (done) { ctrl.close(); return; }
    for (let i = 0; i < value.length; i += SIZE) {
      await new Promise((r) => setTimeout(r, DELAY));
      if (signal && signal.aborted) throw new DOMException("The user aborted a request.", "AbortError");
      ctrl.enqueue(value.slice(i, i + SIZE));
    }
  }});
  return new Response(body, {status: res.status, headers: res.headers});
};
"""

def slow_streams(browser, size=64, delay_ms=20):
    browser.execute_script(SLOW_FETCH, size, delay_ms)

# Every text the reply's box showed, in order: proof that it grew piece by piece rather than appearing whole.
WATCH_TEXTS = """
window.shown = [];
new MutationObserver((records) => { for (const r of records) for (const n of r.addedNodes)
  if (n.nodeType === Node.TEXT_NODE && n.parentElement.closest('.msg.assistant')) window.shown.push(n.data); })
  .observe(document.getElementById("log"), {childList: true, subtree: true});
"""

def feedback_rows(server):
    from chatgpt_course.feedback import choices, open_feedback, ratings
    db = open_feedback(server.db)
    try: return ratings(db), choices(db)
    finally: db.close()


# ---- the tests: each opens the page afresh

def test_model_name_and_version_are_shown(browser, server):
    open_page(browser, server)
    m = api(server, "/v1/models")["data"][0]
    shown = browser.find_element(By.ID, "model").text
    assert m["id"] in shown and str(m["version"]) in shown, (shown, m)


def test_reply_streams_in_and_equals_the_api_reply(browser, server):
    open_page(browser, server, temperature=0, max_tokens=24)
    slow_streams(browser); browser.execute_script(WATCH_TEXTS)
    send(browser, "Hello there")
    first = wait(browser, lambda d: replies(d) and replies(d)[-1].get_attribute("data-state") == "streaming" and text_of(replies(d)[-1]))
    reply = last_reply_done(browser)
    api_text = chat_api(server, [{"role": "user", "content": "Hello there"}], 24)
    assert text_of(reply) == api_text, (text_of(reply), api_text)
    shown = browser.execute_script("return window.shown")
    assert len(shown) > 2 and all(api_text.startswith(t) for t in shown) and shown[-1] == api_text, shown
    assert len(first) < len(api_text), "the reply was never seen part way"
    assert int(reply.get_attribute("data-chunks")) > 1, "the reply came in one piece, not streamed"


def test_shift_enter_is_a_newline_and_text_is_never_html(browser, server):
    open_page(browser, server, temperature=0, max_tokens=4)
    box = browser.find_element(By.ID, "input")
    box.send_keys("<b>bold</b> & <img src=x onerror=alert(1)>")
    box.send_keys(Keys.SHIFT, Keys.ENTER); box.send_keys("line two")
    assert box.get_property("value") == "<b>bold</b> & <img src=x onerror=alert(1)>\nline two"
    assert not browser.find_elements(By.CSS_SELECTOR, "#log .msg"), "Shift+Enter sent the message"
    box.send_keys(Keys.ENTER)
    last_reply_done(browser)
    user = browser.find_element(By.CSS_SELECTOR, "#log .msg.user")
    assert text_of(user) == "<b>bold</b> & <img src=x onerror=alert(1)>\nline two"
    assert not browser.find_elements(By.CSS_SELECTOR, "#log b, #log img"), "message text became HTML"


def test_stop_ends_the_stream_part_way(browser, server):
    open_page(browser, server, temperature=0, max_tokens=120)
    slow_streams(browser)  # the whole reply would take seconds to arrive
    send(browser, "Tell me a long story")
    wait(browser, lambda d: replies(d) and text_of(replies(d)[-1]))
    browser.find_element(By.ID, "stop").click()
    reply = last_reply_done(browser, states=("stopped",))
    full = chat_api(server, [{"role": "user", "content": "Tell me a long story"}], 120)
    shown = text_of(reply)
    assert shown and full.startswith(shown) and len(shown) < len(full), (shown, full)
    assert "stopped" in reply.find_element(By.CLASS_NAME, "note").text
    assert browser.find_element(By.ID, "send").is_displayed() and not browser.find_element(By.ID, "stop").is_displayed()


def chat_api(server, messages, max_tokens) -> str:
    "The API's non-streamed reply at temperature 0."
    body = {"model": server.model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
    return api(server, "/v1/chat/completions", body)["choices"][0]["message"]["content"]

def test_the_conversation_goes_with_each_message_until_new_chat(browser, server):
    open_page(browser, server, temperature=0, max_tokens=8)
    send(browser, "First question"); first = text_of(last_reply_done(browser))
    send(browser, "Second question"); second = text_of(last_reply_done(browser))
    assert len(replies(browser)) == 2
    assert second == chat_api(server, [{"role": "user", "content": "First question"}, {"role": "assistant", "content": first},
                                       {"role": "user", "content": "Second question"}], 8)
    browser.find_element(By.ID, "new-chat").click()
    assert not browser.find_elements(By.CSS_SELECTOR, "#log .msg")
    send(browser, "Second question")  # answered as a first message: the old turns are gone from the request too
    reply = last_reply_done(browser)
    assert len(replies(browser)) == 1 and text_of(reply) == chat_api(server, [{"role": "user", "content": "Second question"}], 8)


def test_thumbs_up_writes_a_rating(browser, server):
    open_page(browser, server, temperature=0, max_tokens=12)
    send(browser, "Rate this one"); reply = last_reply_done(browser)
    before, _ = feedback_rows(server)
    up = reply.find_element(By.CSS_SELECTOR, ".thumb.up")
    up.click()
    wait(browser, lambda d: up.get_attribute("aria-pressed") == "true")
    after, _ = feedback_rows(server)
    assert len(after) == len(before) + 1
    row = after[-1]
    assert row["reply"] == text_of(reply) and row["prompt"][-1] == {"role": "user", "content": "Rate this one"}
    assert row["rating"] == 5 and row["model"] == f"{server.model}@{server.version}"  # the top of 07d's 1-5 scale; who wrote it
    assert reply.find_element(By.CSS_SELECTOR, ".thumb.down").get_property("disabled"), "a reply can be rated twice"


def test_regenerate_offers_two_and_the_choice_is_recorded(browser, server):
    open_page(browser, server, temperature=0, max_tokens=12, seed=3)
    send(browser, "Pick one"); reply = last_reply_done(browser)
    reply.find_element(By.CLASS_NAME, "regen").click()
    wait(browser, lambda d: all(b.is_enabled() for b in d.find_elements(By.CSS_SELECTOR, ".candidate .choose")) and
         len(d.find_elements(By.CSS_SELECTOR, ".candidate .choose")) == 2)
    a, b = (text_of(c) for c in browser.find_elements(By.CSS_SELECTOR, ".candidate"))
    assert a and b
    browser.find_element(By.CSS_SELECTOR, ".candidate[data-side='b'] .choose").click()
    wait(browser, lambda d: reply.get_attribute("data-chosen") == "b")
    _, rows = feedback_rows(server)
    row = rows[-1]
    assert (row["reply_a"], row["reply_b"], row["winner"]) == (a, b, "b")
    assert row["prompt"] == [{"role": "user", "content": "Pick one"}] and row["model_b"] == f"{server.model}@{server.version}"
    assert text_of(reply) == b and not browser.find_elements(By.CLASS_NAME, "candidate")


def test_an_api_error_is_shown_in_the_page(browser, server):
    open_page(browser, server, max_tokens=100000)  # beyond the context: the server answers 400 in OpenAI's shape
    send(browser, "Too long a reply")
    box = wait(browser, lambda d: d.find_element(By.ID, "error").is_displayed() and d.find_element(By.ID, "error"))
    assert box.text.startswith("400") and "max_tokens" in box.text, box.text
    assert not browser.find_elements(By.CSS_SELECTOR, "#log .msg"), "a failed turn stays in the conversation"
    assert browser.find_element(By.ID, "input").get_property("value") == "Too long a reply"  # given back to edit


def test_the_page_waits_for_a_model_still_loading(browser, server, model_dir, tmp_path):
    "As `chatgpt-course serve` starts: listening at once, the model loaded after; the page shows it once it is there."
    from chatgpt_course.backend import Backend
    from chatgpt_course.serve import ServerThread, make_app
    with Backend(model_dir, load=False) as backend, ServerThread(make_app(backend, feedback_db=tmp_path / "f.sqlite")) as s:
        browser.get(s.url + "/")
        wait(browser, lambda d: "loading" in d.find_element(By.ID, "model").text)
        backend.reload()
        wait(browser, lambda d: server.model in d.find_element(By.ID, "model").text)
        assert not browser.find_element(By.ID, "error").is_displayed()


def test_an_api_key_from_the_settings_is_sent(browser, server, model_dir, tmp_path):
    from chatgpt_course.backend import Backend
    from chatgpt_course.serve import ServerThread, make_app
    with Backend(model_dir) as backend, ServerThread(make_app(backend, api_key="sesame", feedback_db=tmp_path / "f.sqlite")) as s:
        browser.get(s.url + "/?max_tokens=4")
        error = wait(browser, lambda d: d.find_element(By.ID, "error").is_displayed() and d.find_element(By.ID, "error"))
        assert error.text.startswith("401"), error.text
        browser.find_element(By.TAG_NAME, "summary").click()  # open the settings
        key = browser.find_element(By.ID, "api-key")
        key.send_keys("sesame", Keys.TAB)  # leaving the box is a change: the page asks for the model again, with the key
        wait(browser, lambda d: server.model in d.find_element(By.ID, "model").text and not d.find_element(By.ID, "error").is_displayed())
        send(browser, "Hello"); assert text_of(last_reply_done(browser))
        browser.execute_script("sessionStorage.clear()")
