"""The server's page in a real headless browser (Debian's Chromium, driven over the DevTools
protocol): it loads, lists the voices, and a click gives audio the browser can play."""

import base64
import json
import os
import shutil
import subprocess
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
import pytest

import tiny_models as tm
from serve_helpers import Server, pcm_of, voice_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# CI installs Chromium with the test command (scripts/ensure_chromium.sh): there it must run
pytestmark = [pytest.mark.usefixtures("f32_precision"),
              pytest.mark.skipif(CHROMIUM is None and not os.environ.get("WSVK_REQUIRE_ADAPTER"),
                                 reason="no chromium (scripts/ensure_chromium.sh installs it)")]


class Browser:
    """Headless Chromium with one page, commands over its DevTools websocket."""

    def __init__(self, profile: Path):
        from websockets.sync.client import connect

        assert CHROMIUM, "chromium is not installed (scripts/ensure_chromium.sh)"
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "TMPDIR": str(profile.parent)})  # its singleton socket dir outlives SIGTERM
        port_file, deadline = profile / "DevToolsActivePort", time.time() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            assert time.time() < deadline and self.proc.poll() is None, "chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        page = next(t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page")
        self.stack = ExitStack()
        self.ws = self.stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None))
        self.n = 0

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                return msg["result"]

    def js(self, expr: str, wait: bool = False):
        res = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=wait)
        assert "exceptionDetails" not in res, res["exceptionDetails"]
        return res["result"].get("value")

    def until(self, expr: str, timeout: float = 120):
        deadline = time.time() + timeout
        while not (value := self.js(expr)):
            assert time.time() < deadline, f"timed out waiting for {expr}"
            time.sleep(0.2)
        return value

    def close(self):
        self.stack.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus"])  # Web Audio, MediaSource, once downloaded
def test_page_lists_voices_and_a_click_gives_playable_audio(pipe, tmp_path, fmt):
    server = Server(pipe, slots=2, queue=2, voices={"default": pipe.default_speaker(), "anna": pipe.default_speaker()})
    browser = Browser(tmp_path / "profile")
    try:
        browser.call("Page.navigate", url=server.url + "/")
        assert browser.until("window.wsvk && window.wsvk.voices.length") == 2
        assert browser.js("[...document.querySelectorAll('#voice option')].map(o => o.value)") == ["default", "anna"]
        browser.js(f"document.getElementById('format').value = '{fmt}'; "
                   "document.getElementById('text').value = 'Hello from the browser.'")
        browser.js("document.getElementById('speak').click()")
        browser.until("window.wsvk.done || window.wsvk.error")
        assert browser.js("window.wsvk.error") is None
        assert browser.js("window.wsvk.streamed") == (fmt != "opus")  # played while it arrived
        assert browser.js("window.wsvk.streamError") is None  # ... and the stream player kept it
        link = browser.js("const a = document.getElementById('download'); [a.hidden, a.download, a.href]")
        assert link[0] is False and link[1] == f"speech.{'ogg' if fmt == 'opus' else fmt}" and link[2].startswith("blob:")
        assert browser.js("window.wsvk.bytes") > 1000 and browser.js("window.wsvk.firstAudioMs") is not None
        duration = browser.js("""new Promise(done => {
            const a = document.getElementById('player');
            if (a.readyState >= 1) return done(a.duration);
            a.onloadedmetadata = () => done(a.duration);
            a.onerror = () => done(-1);
            setTimeout(() => done(-2), 20000);
        })""", wait=True)
        assert duration > 0.1, duration  # the browser decoded the audio it got
        assert "done:" in browser.js("document.getElementById('status').textContent")
    finally:
        browser.close()
        server.close()


def test_the_stream_player_settles_and_says_why_when_the_browser_cannot_play(pipe, tmp_path):
    """Bytes the browser cannot decode: end() still settles, with the reason (the page then
    plays the downloaded copy); a clean short stream settles without one."""
    server = Server(pipe, slots=1, queue=1, voices={"default": pipe.default_speaker()})
    browser = Browser(tmp_path / "profile")
    try:
        browser.call("Page.navigate", url=server.url + "/")
        browser.until("window.wsvk && window.wsvk.voices.length")
        garbage = browser.js("""(async () => {
            const p = new StreamPlayer(new Audio(), "audio/mpeg");
            p.push(new Uint8Array(6000).fill(7));
            await Promise.race([p.end(), new Promise(r => setTimeout(r, 20000))]);
            return p.failed;
        })()""", wait=True)
        assert garbage, garbage
        empty = browser.js("""(async () => {
            const p = new StreamPlayer(new Audio(), "audio/mpeg");
            const t = await Promise.race([p.end().then(() => "settled"), new Promise(r => setTimeout(() => r("hung"), 20000))]);
            return [t, p.failed];
        })()""", wait=True)
        assert empty == ["settled", None], empty
    finally:
        browser.close()
        server.close()


def test_a_new_request_or_stop_ends_what_plays_and_errors_read_plainly(pipe, tmp_path):
    """Speak twice: one AudioContext, and the first request's audio stops when the second starts;
    Stop stops both the download and the playback; no voice listed yet: the server's default; a
    proxy's plain-text error reads as its status, not as a JSON parse error."""
    server = Server(pipe, slots=2, queue=2, voices={"default": pipe.default_speaker()})
    browser = Browser(tmp_path / "profile")
    try:
        browser.call("Page.navigate", url=server.url + "/")
        browser.until("window.wsvk && window.wsvk.voices.length")
        browser.js("document.getElementById('format').value = 'pcm'; document.getElementById('voice').replaceChildren(); "
                   "document.getElementById('text').value = 'One. Two, three.'")
        browser.js("document.getElementById('speak').click()")
        browser.until("window.wsvk.done || window.wsvk.error")
        assert browser.js("window.wsvk.error") is None  # no voice listed: the request named none
        browser.js("window.first = [audioContext, current.player]; window.stopped = 0; "
                   "const stop1 = current.player.stop.bind(current.player); "
                   "current.player.stop = () => { window.stopped++; stop1(); }")
        browser.js("document.getElementById('speak').click()")
        browser.until("window.wsvk.done || window.wsvk.error")
        assert browser.js("window.wsvk.error") is None
        assert browser.js("[audioContext === window.first[0], current.player !== window.first[1], window.stopped, "
                          "window.first[1].sources.size]") == [True, True, 1, 0]  # the first one was stopped
        browser.js("document.getElementById('stop').click()")
        assert browser.js("current === null && document.getElementById('status').textContent === 'stopped'")
        message = browser.js("""errorOf(new Response("Internal Server Error", {status: 502, statusText: "Bad Gateway"}))""",
                             wait=True)
        assert message == "502 Bad Gateway: Internal Server Error", message
    finally:
        browser.close()
        server.close()


def test_the_page_shows_backend_elapsed_time_and_place_in_line(pipe, tmp_path):
    """With the one slot taken by another client: the page says which backend serves, counts the
    seconds and shows its place in line while it waits, sends its language and seed, and the
    browser's favicon request is answered (no 404 line per visit)."""
    server = Server(pipe, slots=1, queue=2, voices={"default": pipe.default_speaker()})
    browser = Browser(tmp_path / "profile")
    try:
        browser.call("Page.navigate", url=server.url + "/")
        browser.until("window.wsvk && window.wsvk.voices.length")
        assert browser.until("window.wsvk.backend") == "served by GPU: " + pipe_adapter()
        assert browser.js("fetch('/favicon.ico').then(r => [r.status, r.headers.get('content-type')])", wait=True) == [
            200, "image/svg+xml"]
        other = threading.Thread(target=lambda: httpx.post(f"{server.url}/v1/audio/speech", timeout=300, json={
            "input": "A longer text that holds the only slot. " * 3, "response_format": "pcm", "seed": 1}))
        other.start()
        deadline = time.time() + 60
        while httpx.get(f"{server.url}/health").json()["active"] != 1:
            assert time.time() < deadline, "the other request never started"
            time.sleep(0.1)
        browser.js("window.sent = []; const f = window.fetch; window.fetch = (u, o) => "
                   "{ if (String(u).endsWith('/speech')) window.sent.push(JSON.parse(o.body)); return f(u, o); }; "
                   "document.getElementById('format').value = 'pcm'; document.getElementById('lang').value = 'pl'; "
                   "document.getElementById('seed').value = '7'; document.getElementById('text').value = 'Cześć.'")
        browser.js("document.getElementById('speak').click()")
        assert browser.until("window.wsvk.place && window.wsvk.place.waiting && "
                             "document.getElementById('status').textContent").startswith("speaking... ")
        assert "place 1 in line" in browser.until(
            "(t => t.includes('in line') && t)(document.getElementById('status').textContent)")
        browser.until("window.wsvk.done || window.wsvk.error", timeout=300)
        assert browser.js("window.wsvk.error") is None
        assert browser.js("window.sent.map(b => [b.lang, b.seed])") == [["pl", 7]]
        other.join(timeout=300)
    finally:
        browser.close()
        server.close()


def test_the_page_adds_a_voice_when_the_server_allows_it_and_speaks_with_it(pipe, tmp_path):
    """Without --voice-upload the page says how to add voices and shows no form; with it, a file
    chosen in the browser becomes a voice (named after the file), selected, and speech with it is
    generate()'s with that file as the speaker; a refused one reads as the server's message."""
    folder = tmp_path / "voices"
    folder.mkdir()
    source = tm.write_voice(tmp_path / "My voice.wav", seed=5)
    off, on = Server(pipe, slots=1, queue=1), voice_server(pipe, folder)
    browser = Browser(tmp_path / "profile")
    shown = "[document.getElementById('upload').hidden, document.getElementById('voices-note').hidden]"
    try:
        browser.call("Page.navigate", url=off.url + "/")
        browser.until("window.wsvk && window.wsvk.backend")
        assert browser.js(shown) == [True, False]
        assert "--voices DIR --voice-upload" in browser.js("document.getElementById('voices-note').textContent")
        browser.call("Page.navigate", url=on.url + "/")
        browser.until("window.wsvk && window.wsvk.voiceUpload && window.wsvk.voices.length")
        assert browser.js(shown) == [False, True]
        root = browser.call("DOM.getDocument")["root"]["nodeId"]
        node = browser.call("DOM.querySelector", nodeId=root, selector="#voice-file")["nodeId"]
        browser.call("DOM.setFileInputFiles", files=[str(source)], nodeId=node)
        assert browser.until("document.getElementById('voice-name').value") == "My-voice"
        browser.js("document.getElementById('add-voice').click()")
        browser.until("window.wsvk.added || window.wsvk.addError")
        assert browser.js("[window.wsvk.added, window.wsvk.addError]") == ["My-voice", None]
        assert browser.js("[[...document.querySelectorAll('#voice option')].map(o => o.value), "
                          "document.getElementById('voice').value]") == [["default", "My-voice"], "My-voice"]
        assert (folder / "My-voice.wav").read_bytes() == source.read_bytes()
        browser.js("document.getElementById('format').value = 'pcm'; document.getElementById('seed').value = '7'; "
                   "document.getElementById('text').value = 'Hello in my voice.'")
        browser.js("document.getElementById('speak').click()")
        browser.until("window.wsvk.done || window.wsvk.error")
        assert browser.js("window.wsvk.error") is None
        wav = base64.b64decode(browser.js("""fetch(document.getElementById('download').href)
            .then(r => r.arrayBuffer()).then(b => {
                const u = new Uint8Array(b); let s = "";
                for (let i = 0; i < u.length; i += 8192) s += String.fromCharCode(...u.subarray(i, i + 8192));
                return btoa(s);
            })""", wait=True))
        audio = np.frombuffer(wav[44:], "<i2").astype(np.float64) / 32767  # the page's copy: a WAV header first
        ref = pipe.generate("Hello in my voice.", speaker=str(folder / "My-voice.wav"), seed=7)
        assert audio.size == ref.size and np.abs(audio - pcm_of(ref)).max() < 1.5 / 32767
        browser.js("document.getElementById('add-voice').click()")  # the same name again
        assert "voice name 'My-voice' is taken" in browser.until("window.wsvk.addError")
        assert "could not add the voice: " in browser.js("document.getElementById('status').textContent")
    finally:
        browser.close()
        off.close()
        on.close()


def pipe_adapter() -> str:
    from wsvk.router import active_backend

    return active_backend()[1]
