#!/usr/bin/env python3
"""End-to-end test of the web console in a real headless Chromium, driven through WebDriver
(chromedriver's W3C HTTP API, from the standard library only).

Real tablets (the `communesync device` CLI, core's sync client) sync real records to a real
`communesync serve`; then the browser logs in, checks the dashboard's figures against what was
synced, searches a record without diacritics and follows its history, issues an enrollment code
that enrolls a tablet, revokes it and sees its next sync refused, publishes a catalogue, exports
a report and checks its numbers (with the browser's session cookie), and is refused on a forged
CSRF token and on a viewer's action. A screenshot of each page goes to target/console-screenshots/.

Usage: browser_test.py BIN CHROMEDRIVER CHROMIUM WORKDIR
"""
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

BIN, DRIVER, CHROMIUM, OUT = (os.path.abspath(p) for p in sys.argv[1:5])
COMMUNE = "DB-MUONGANG"
PASSWORD = "a long enough passphrase"
ENV = dict(os.environ, COMMUNESYNC_STORE_KEY="44" * 32)
SHOTS = os.path.join(OUT, "console-screenshots")
os.makedirs(SHOTS, exist_ok=True)
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args, stdin=None, ok=True):
    done = subprocess.run([BIN, *args], input=stdin, capture_output=True, text=True, env=ENV, cwd=WORK, timeout=120)
    if ok and done.returncode != 0:
        raise SystemExit(f"{args}: {done.stderr}")
    return done


def cli_json(*args):
    return json.loads(cli(*args).stdout.strip().splitlines()[-1])


def wait_port(port, what):
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not start")


class Browser:
    def __init__(self, driver_url, profile):
        self.base = driver_url
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={profile}", "--window-size=1280,1000"]}}}}
        self.session = self.call("POST", "/session", caps)["sessionId"]

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["value"]

    def s(self, method, path, body=None):
        return self.call(method, f"/session/{self.session}{path}", body)

    def go(self, url):
        self.s("POST", "/url", {"url": url})

    def find(self, css):
        # Bounded wait: the element may belong to a page still loading.
        for _ in range(100):
            try:
                found = self.s("POST", "/element", {"using": "css selector", "value": css})
                return found[ELEMENT]
            except urllib.error.HTTPError:
                time.sleep(0.1)
        raise SystemExit(f"no {css} on {self.s('GET', '/url')}:\n{self.source()[:3000]}")

    def text(self, css):
        return self.s("GET", f"/element/{self.find(css)}/text")

    def type(self, css, text):
        element = self.find(css)
        self.s("POST", f"/element/{element}/clear", {})
        self.s("POST", f"/element/{element}/value", {"text": text})

    def click(self, css):
        """Clicks something that loads a page, and waits (bounded) until the new page is in."""
        self.run("document.documentElement.setAttribute('data-old', '1')")
        self.s("POST", f"/element/{self.find(css)}/click", {})
        for _ in range(100):
            try:
                if self.run("return document.readyState === 'complete' && "
                            "!document.documentElement.hasAttribute('data-old')"):
                    return
            except urllib.error.HTTPError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"clicking {css} loaded no page")

    def source(self):
        return self.s("GET", "/source")

    def run(self, script):
        return self.s("POST", "/execute/sync", {"script": script, "args": []})

    def shot(self, name):
        with open(os.path.join(SHOTS, f"{name}.png"), "wb") as f:
            f.write(base64.b64decode(self.s("GET", "/screenshot")))

    def cookie(self, name):
        return next(c["value"] for c in self.s("GET", "/cookie") if c["name"] == name)

    def close(self):
        self.s("DELETE", "")


def check(condition, message):
    if not condition:
        raise SystemExit(f"console browser test: {message}")


WORK = tempfile.mkdtemp(prefix="console-e2e-")
db = f"sqlite:{WORK}/province.db"
cli("admin", "--database", db, "create-commune", COMMUNE, "Xã Mường Ảng")
cli("admin", "--database", db, "create-operator", "lan", "--role", "admin", stdin=PASSWORD + "\n")
cli("admin", "--database", db, "create-operator", "minh", "--role", "viewer", stdin=PASSWORD + "\n")
code = cli_json("admin", "--database", db, "issue-code", "--commune", COMMUNE)["code"]
port = free_port()
server = subprocess.Popen([BIN, "serve", "--database", db, "--listen", f"127.0.0.1:{port}"], cwd=WORK,
                          stderr=subprocess.DEVNULL, env=ENV)
driver_port = free_port()
driver = subprocess.Popen([DRIVER, f"--port={driver_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
browser = None
try:
    wait_port(port, "server")
    wait_port(driver_port, "chromedriver")
    url = f"http://127.0.0.1:{port}"

    # Real tablets sync real records.
    tablet = f"{WORK}/tablet.db"
    cli("device", "--store", tablet, "enroll", "--server", url, "--code", code)
    with open(f"{WORK}/catalogue.json", "w") as f:
        f.write('{"procedures":[{"code":"1.001193","name":"Đăng ký khai sinh","processing_days":5}],"holidays":[]}')
    cli("admin", "--database", db, "put-catalogue", f"{WORK}/catalogue.json")
    cli("device", "--store", tablet, "sync")
    names = ["Nguyễn Thị Hương", "Lò Văn Đức", "Quàng Thị Mai", "Đèo Văn Long", "Cà Thị Nga"]
    with open(f"{WORK}/register.jsonl", "w") as f:
        for name in names:
            f.write(json.dumps({"commune_code": COMMUNE, "procedure_code": "1.001193", "applicant": {
                "name": name, "id_number": "", "phone": "", "address": "", "village": "Bản Co"}}, ensure_ascii=False) + "\n")
    cli("device", "--store", tablet, "import", f"{WORK}/register.jsonl")
    pushed = json.loads(cli("device", "--store", tablet, "sync").stdout.strip().splitlines()[-1])["pushed_docs"]
    check(pushed == len(names), f"the tablet pushed {pushed}")

    browser = Browser(f"http://127.0.0.1:{driver_port}", tempfile.mkdtemp(prefix="chromium-profile-"))
    browser.go(f"{url}/console")
    check("/console/login" in browser.s("GET", "/url"), "not sent to the login page")
    browser.shot("01-login")
    browser.type("#username", "lan")
    browser.type("#password", "wrong password, surely")
    browser.click("#login")
    check('id="error"' in browser.source(), "a wrong password was not refused")
    browser.type("#username", "lan")
    browser.type("#password", PASSWORD)
    browser.click("#login")

    # Dashboard figures match what the tablet synced.
    month = browser.text(f"tr[data-commune='{COMMUNE}'] td.month")
    open_ = browser.text(f"tr[data-commune='{COMMUNE}'] td.open")
    check((month, open_) == (str(len(names)), str(len(names))), f"dashboard shows {month}, {open_}")
    check("<svg" in browser.source(), "no chart")
    browser.shot("02-dashboard")

    # Search without diacritics, follow the record's history.
    browser.go(f"{url}/console/records")
    browser.type("#search-name", "nguyen thi huong")
    browser.click("#search")
    check(browser.text("#count") == "1", "search without diacritics")
    check("Nguyễn Thị Hương" in browser.text("#records"), "the record found")
    browser.shot("03-records")
    browser.click("a.record")
    check("created" in browser.text("#history"), "history")
    browser.shot("04-record")

    # Language switch.
    browser.click("#lang")
    check("Dashboard" in browser.source() or "Records" in browser.source(), "English")
    browser.click("#lang")

    # Enrollment code with a QR code; a tablet enrolls with it.
    browser.go(f"{url}/console/enrollment")
    browser.click("#issue")
    new_code = browser.text("#code")
    check("<svg" in browser.source(), "QR code")
    browser.shot("05-enrollment-code")
    second = f"{WORK}/second.db"
    second_id = json.loads(cli("device", "--store", second, "enroll", "--server", url, "--code", new_code).stdout.strip().splitlines()[-1])["device_id"]
    cli("device", "--store", second, "sync")

    browser.go(f"{url}/console/fleet")
    check(second_id in browser.source(), "the new tablet in the fleet")
    browser.shot("06-fleet")

    # A forged CSRF token is refused; nothing changes.
    browser.go(f"{url}/console/enrollment")
    browser.run("document.querySelectorAll('input[name=csrf]').forEach(function(e){e.value='forged'})")
    browser.click(f"button.revoke[data-device='{second_id}']")
    check('id="error"' in browser.source(), "a forged CSRF token was not refused")
    cli("device", "--store", second, "sync")

    # Revoke: its next sync is refused.
    browser.go(f"{url}/console/enrollment")
    browser.click(f"button.revoke[data-device='{second_id}']")
    refused = cli("device", "--store", second, "sync", ok=False)
    check(refused.returncode != 0 and "revoked" in refused.stderr, "the revoked tablet still syncs")

    # Publish a catalogue.
    browser.go(f"{url}/console/catalogue")
    browser.shot("07-catalogue")
    catalogue = ('{"procedures":[{"code":"1.001193","name":"Đăng ký khai sinh","processing_days":3,"version":2},'
                 '{"code":"1.000894","name":"Đăng ký kết hôn","processing_days":5}],"holidays":[]}')
    browser.type("#catalogue-json", catalogue)
    browser.click("#check")
    check(browser.text("#added") == "1.000894" and browser.text("#changed") == "1.001193", "catalogue diff")
    browser.shot("08-catalogue-diff")
    browser.click("#publish")
    check(browser.text("#catalogue-version") == "2", "catalogue published")

    # Export a report and check its numbers.
    browser.go(f"{url}/console/exports")
    browser.shot("09-exports")
    today = browser.run("return document.getElementById('to').value")
    session = browser.cookie("cs_session")
    request = urllib.request.Request(f"{url}/console/exports/report?from={today}&to={today}&format=csv",
                                     headers={"Cookie": f"cs_session={session}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        csv = response.read().decode()
    check(f"{today},{today},{COMMUNE},1.001193,{len(names)},0,0,0" in csv, f"report numbers: {csv}")

    browser.go(f"{url}/console/audit")
    for action in ["login", "login_failed", "issue_code", "refused_csrf", "revoke", "publish_catalogue", "export_report"]:
        check(f">{action}<" in browser.source(), f"{action} not in the audit log")
    browser.shot("10-audit")

    # A viewer may not act.
    browser.click("#logout")
    browser.type("#username", "minh")
    browser.type("#password", PASSWORD)
    browser.click("#login")
    browser.go(f"{url}/console/enrollment")
    browser.click("#issue")
    check('id="error"' in browser.source() and 'id="code"' not in browser.source(), "a viewer issued a code")
    browser.shot("11-viewer-refused")
    print("console browser test: ok", file=sys.stderr)
finally:
    if browser is not None:
        try:
            browser.close()
        except Exception:
            pass
    driver.kill()
    server.kill()
