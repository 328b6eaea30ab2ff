"""Screenshots of TensorBoard pages with headless Chromium (for docs/tensorboard.md).

    python docs/examples/tb_screenshot.py URL OUT.png [--width=1400 --height=900 --wait=12]
        [--local_storage=KEY=VALUE ...]

Drives `chromium-headless-shell` (or `chromium`) over the DevTools protocol
(`pip install websocket-client`): opens URL, sets TensorBoard's localStorage
settings (e.g. `_ignoreYOutliers=false`, which the URL cannot set), reloads,
waits for the charts, saves a PNG. WebGL is disabled so that the charts are
drawn with SVG/canvas, which headless Chromium renders reliably.
"""

import argparse
import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request

import websocket


def _browser():
    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("no Chromium found: apt-get install chromium-headless-shell")


class _Page:
    def __init__(self, ws):
        self.ws, self.n = ws, 0

    def call(self, method, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})


def screenshot(url, out, width=1400, height=900, wait=12.0, local_storage=(), port=9333):
    profile = tempfile.mkdtemp(prefix="tbshot")
    proc = subprocess.Popen(
        [_browser(), "--no-sandbox", "--disable-gpu", "--disable-3d-apis", "--disable-webgl",
         "--hide-scrollbars", f"--window-size={width},{height}", f"--user-data-dir={profile}",
         f"--remote-debugging-port={port}", "--remote-allow-origins=*", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise SystemExit("the browser did not start")
        target = next(t for t in targets if t["type"] == "page")
        page = _Page(websocket.create_connection(target["webSocketDebuggerUrl"], timeout=120))
        page.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        page.call("Page.navigate", url=url)
        time.sleep(3)
        if local_storage:
            js = "".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});" for k, v in local_storage)
            page.call("Runtime.evaluate", expression=js)
            page.call("Page.reload")
        time.sleep(wait)
        png = page.call("Page.captureScreenshot", format="png")["data"]
        with open(out, "wb") as f:
            f.write(base64.b64decode(png))
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(profile, ignore_errors=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("out")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=900)
    p.add_argument("--wait", type=float, default=12.0, help="seconds to let the charts load")
    p.add_argument("--local_storage", action="append", default=[], help="KEY=VALUE (repeatable)")
    args = p.parse_args()
    pairs = [kv.split("=", 1) for kv in args.local_storage]
    print(screenshot(args.url, args.out, args.width, args.height, args.wait, pairs))


if __name__ == "__main__":
    main()
