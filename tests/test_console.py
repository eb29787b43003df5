"""The web console in a real browser: Debian's headless Chromium driven by Playwright,
against a real `gatewayd serve` (one daemon and one browser for the module).

Every page records the hosts it asked and its console messages: nothing may go
anywhere but the gateway, and nothing may be logged as an error except the answers a
case provokes on purpose. Screenshots of the main pages go to the module's temp folder.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import pytest_asyncio

from tests.api_support import ALL, PASSWORD, ApiEnv, basic, password_hash
from tests.daemon_proc import DaemonProcess
from tests.gateway_env import make_file

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = Path("/usr/bin/chromium")
# No sandbox as root in a container; no network of Chromium's own (updates, safe
# browsing, QUIC probes): the closed network would stall or log them.
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MiB = 1 << 20
RATE = 1 * MiB  # bytes/s: the partner's limit, so that a transfer runs for seconds
READER = {area: "r" for area in ALL}
WAIT = 30_000  # ms: the longest any step may take

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
]


@dataclass
class Gateway:
    env: ApiEnv
    daemon: DaemonProcess
    base: str
    shots: Path
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        headers = kw.pop("headers", None) or {"Authorization": basic("admin")}
        async with self.http.request(method, self.base + path, headers=headers, **kw) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text.startswith(("{", "[")) else text)

    async def transfer(self, **request: Any) -> int:
        status, body = await self.call(
            "POST", "/api/transfers", json={"nbOfAttempts": 0, **request}
        )
        assert status == 201, body
        return int(body["id"])

    async def row(self, transfer_id: int) -> dict[str, Any]:
        status, body = await self.call("GET", f"/api/transfers/{transfer_id}")
        assert status == 200, body
        return dict(body)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    root = tmp_path_factory.mktemp("console")
    env = ApiEnv(root)
    env.users["reader"] = dict(READER)
    env.accounts["fixed"] = {"password": password_hash()}  # of the main file: read-only
    env.partners["share"]["max_rate"] = RATE
    env.daemon["progress_interval"] = 0.2
    env.rule("in", "receive")
    env.rule("edited", "receive", comment="edited from the console")
    env.write()
    daemon = await DaemonProcess.start(env.config_file)
    line = await daemon.wait_for("api listening")
    port = int(line.split("port=")[1].split()[0])
    shots = root / "screenshots"
    shots.mkdir()
    async with aiohttp.ClientSession() as http:
        try:
            yield Gateway(env, daemon, f"http://127.0.0.1:{port}", shots, http)
        finally:
            assert await daemon.stop(timeout=15) == 0, daemon.output
    assert PASSWORD not in daemon.output


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@dataclass
class Watched:
    """A browser page, with every host it asked and every error it logged."""

    page: Any
    base: str
    hosts: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    async def login(self, user: str) -> None:
        await self.page.goto(self.base + "/")
        await self.page.fill("input[name=user]", user)
        await self.page.fill("input[name=password]", PASSWORD)
        await self.page.click("form#login button[type=submit]")
        await self.page.wait_for_selector("#logout:not([hidden])", timeout=WAIT)

    async def go(self, hash_path: str) -> None:
        await self.page.evaluate("(h) => { location.hash = h; }", hash_path)

    def check(self, allowed_errors: int = 0, what: str = "") -> None:
        gateway = urlsplit(self.base).netloc
        assert self.hosts <= {gateway}, f"requests to other hosts: {self.hosts - {gateway}}"
        assert len(self.errors) == allowed_errors, (what, self.errors)


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Any, gateway: Gateway) -> AsyncIterator[Watched]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    p = await context.new_page()
    watched = Watched(p, gateway.base)
    p.on("request", lambda r: watched.hosts.add(urlsplit(r.url).netloc))
    p.on("console", lambda m: watched.errors.append(m.text) if m.type == "error" else None)
    p.on("pageerror", lambda e: watched.errors.append(f"uncaught: {e}"))
    try:
        yield watched
    finally:
        await context.close()


async def shoot(page: Any, gateway: Gateway, name: str, full_page: bool = False) -> None:
    """A screenshot in the module's temp folder (and, with GATEWAYD_SCREENSHOTS set, a
    copy there: how the README's pictures are refreshed)."""
    path = gateway.shots / f"{name}.png"
    await page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size > 5_000, f"{path}: nearly empty"
    target = os.environ.get("GATEWAYD_SCREENSHOTS")
    if target:
        shutil.copy(path, Path(target) / path.name)


async def progress_of(page: Any, selector: str) -> float:
    return float(await page.eval_on_selector(selector, "(e) => e.value"))


async def test_a_running_transfer_moves_pauses_resumes_and_ends_without_a_reload(
    gateway: Gateway, page: Watched
) -> None:
    data = make_file(gateway.env.share / "slow.bin", 8 * MiB)
    await page.login("admin")
    tid = await gateway.transfer(rule="in", partner="share", file="slow.bin")
    # The live page: the row appears and its bar moves, fed by the event stream.
    row = f"#live tr[data-id='{tid}']"
    await page.page.wait_for_selector(row, timeout=WAIT)
    await page.page.evaluate("() => { window.sameDocument = true; }")
    first = await progress_of(page.page, f"{row} progress")
    await page.page.wait_for_function(
        "([sel, v]) => document.querySelector(sel) && document.querySelector(sel).value > v",
        arg=[f"{row} progress", first],
        timeout=WAIT,
    )
    rate_text = await page.page.text_content(f"{row} td[data-label=Rate]")
    assert rate_text and rate_text.endswith("/s"), rate_text
    await shoot(page.page, gateway, "console-live")
    # Paused from the live page (the row leaves it), resumed from the transfer's page.
    await page.page.click(f"{row} button[data-action=pause]")
    await page.page.wait_for_selector(row, state="detached", timeout=WAIT)
    await page.go(f"#/transfers/{tid}")
    await page.page.wait_for_selector(".status-line[data-status=PAUSED]", timeout=WAIT)
    paused = await gateway.row(tid)
    assert paused["status"] == "PAUSED" and 0 < paused["progress"] < len(data), paused
    await page.page.click("#transfer-actions button[data-action=resume]")
    await page.page.wait_for_selector(".status-line[data-status=DONE]", timeout=WAIT)
    assert await page.page.evaluate("() => window.sameDocument === true"), "the page reloaded"
    assert await progress_of(page.page, "#transfer-progress") == len(data)
    sha = await page.page.text_content("dd[data-field=sha256]")
    done = await gateway.row(tid)
    assert done["status"] == "DONE" and sha == done["sha256"], (done, sha)
    loaded = gateway.env.load()
    assert (loaded.paths.rule_folder(loaded.config.rules["in"]) / "slow.bin").read_bytes() == data
    await shoot(page.page, gateway, "console-transfer", full_page=True)
    # The history lists it with the filters applied.
    await page.go("#/transfers?status=DONE&rule=in&file=SLOW*")
    await page.page.wait_for_selector(f"table a[href='#/transfers/{tid}']", timeout=WAIT)
    await shoot(page.page, gateway, "console-history")
    page.check()


async def test_a_read_only_user_sees_no_action_and_a_forged_change_is_refused(
    gateway: Gateway, page: Watched
) -> None:
    tid = await gateway.transfer(
        rule="in", partner="share", file="later.bin", start="2099-01-01T00:00:00Z"
    )
    await page.login("reader")
    await page.go(f"#/transfers/{tid}")
    await page.page.wait_for_selector(".status-line[data-status=PLANNED]", timeout=WAIT)
    assert await page.page.locator("#transfer-actions button").count() == 0
    assert await page.page.locator("#nav a[href='#/new']").is_hidden()
    await page.go("#/rules/edited")
    await page.page.wait_for_selector("#rule-yaml", timeout=WAIT)
    assert await page.page.locator("#rule-save").count() == 0
    assert await page.page.locator("#rule-yaml").get_attribute("readonly") is not None
    page.check()
    # The browser's cookie, replayed by another client: without the CSRF token, and
    # with it (the reader may not pause anyway).
    [cookie] = await page.page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    jar = {"Cookie": f"{cookie['name']}={cookie['value']}"}
    status, body = await gateway.call("PUT", f"/api/transfers/{tid}/pause", headers=jar)
    assert status == 403 and body["errors"][0]["errorCode"] == "csrf", body
    status, session = await gateway.call("GET", "/api/session", headers=jar)
    assert status == 200 and session["user"] == "reader", session
    with_token = {**jar, "X-CSRF-Token": session["csrfToken"]}
    status, body = await gateway.call("PUT", f"/api/transfers/{tid}/pause", headers=with_token)
    assert status == 403 and body["errors"][0]["errorCode"] == "forbidden", body
    assert (await gateway.row(tid))["status"] == "PLANNED"


async def test_an_admins_forged_change_without_the_token_is_refused(
    gateway: Gateway, page: Watched
) -> None:
    tid = await gateway.transfer(
        rule="in", partner="share", file="later.bin", start="2099-01-01T00:00:00Z"
    )
    await page.login("admin")
    await page.go(f"#/transfers/{tid}")
    await page.page.wait_for_selector("#transfer-actions button[data-action=pause]", timeout=WAIT)
    [cookie] = await page.page.context.cookies()
    jar = {"Cookie": f"{cookie['name']}={cookie['value']}"}
    status, body = await gateway.call(
        "PUT", f"/api/transfers/{tid}/pause", headers={**jar, "X-CSRF-Token": "guessed"}
    )
    assert status == 403 and body["errors"][0]["errorCode"] == "csrf", body
    assert (await gateway.row(tid))["status"] == "PLANNED"
    # The live page counts it among the planned ones (every node's, from the database).
    status, planned = await gateway.call("GET", "/api/transfers?status=PLANNED&limit=1")
    assert status == 200 and planned["total"] >= 1
    await page.go("#/live")
    count = f".count[data-status=PLANNED]:text-is('{planned['total']}')"
    await page.page.wait_for_selector(count, timeout=WAIT)
    page.check()


async def test_a_rule_edit_with_an_error_shows_its_line_and_changes_nothing(
    gateway: Gateway, page: Watched
) -> None:
    path = gateway.env.root / "rules" / "edited.yaml"
    before = path.read_text()
    await page.login("admin")
    await page.go("#/rules/edited")
    await page.page.wait_for_selector("#rule-yaml", timeout=WAIT)
    text = await page.page.input_value("#rule-yaml")
    assert text == before
    lines = text.splitlines()
    [bad] = [i + 1 for i, line in enumerate(lines) if line.startswith("direction:")]
    lines[bad - 1] = "direction: sideways"
    await page.page.fill("#rule-yaml", "\n".join(lines) + "\n")
    await page.page.click("#rule-save")
    problem = await page.page.wait_for_selector("#rule-problems li", timeout=WAIT)
    message = await problem.text_content()
    assert message and message.startswith(f"line {bad}: "), message
    assert await page.page.locator(f".gutter span.bad[data-line='{bad}']").count() == 1
    await shoot(page.page, gateway, "console-rule-error")
    assert path.read_text() == before, "the file is unchanged"
    status, rule = await gateway.call("GET", "/api/rules/edited")
    assert status == 200 and rule["direction"] == "receive"
    # The browser logs the refused PUT (400) as a failed load: that one only.
    page.check(allowed_errors=1, what="the refused rule")
    assert "400" in page.errors[0]
    # Corrected (and changed), it is saved and in force at once.
    fixed = before.replace("edited from the console", "saved from the console")
    await page.page.fill("#rule-yaml", fixed)
    await page.page.click("#rule-save")
    await page.page.wait_for_selector("#notice .info:has-text('saved')", timeout=WAIT)
    assert await page.page.locator("#rule-problems li").count() == 0
    assert await page.page.locator(".gutter span.bad").count() == 0
    assert path.read_text() == fixed
    status, rule = await gateway.call("GET", "/api/rules/edited")
    assert status == 200 and rule["comment"] == "saved from the console"
    page.check(allowed_errors=1, what="the saved rule")


async def test_logout_ends_the_session(gateway: Gateway, page: Watched) -> None:
    await page.login("admin")
    [cookie] = await page.page.context.cookies()
    jar = {"Cookie": f"{cookie['name']}={cookie['value']}"}
    assert (await gateway.call("GET", "/api/transfers", headers=jar))[0] == 200
    await page.page.click("#logout")
    await page.page.wait_for_selector("form#login", timeout=WAIT)
    assert await page.page.context.cookies() == []
    status, body = await gateway.call("GET", "/api/transfers", headers=jar)
    assert status == 401, body
    page.check()


async def test_phone_width_folds_the_menu(gateway: Gateway, page: Watched) -> None:
    await page.page.set_viewport_size({"width": 390, "height": 800})
    await page.login("admin")
    await page.page.wait_for_selector("#live-empty", state="attached", timeout=WAIT)
    assert await page.page.locator("#nav a[href='#/rules']").is_hidden()
    await page.page.keyboard.press("Tab")  # the skip link, then the menu, by keyboard
    await page.page.focus("#menu")
    await page.page.keyboard.press("Enter")
    await page.page.locator("#nav a[href='#/rules']").wait_for(state="visible", timeout=WAIT)
    width = await page.page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide"
    await shoot(page.page, gateway, "console-phone")
    page.check()


async def test_every_page_shows_and_a_token_is_shown_once(gateway: Gateway, page: Watched) -> None:
    await page.login("admin")
    pages = {
        "#/transfers": "History",
        "#/new": "New transfer",
        "#/rules": "Rules",
        "#/servers": "Servers",
        "#/partners": "Partners",
        "#/accounts": "Accounts",
        "#/users": "Users",
        "#/tokens": "API tokens",
        "#/automation": "Automation",
        "#/nodes": "Cluster nodes",
        "#/audit": "Audit log",
    }
    for where, title in pages.items():
        await page.go(where)
        await page.page.wait_for_selector(f"main h1:text-is('{title}')", timeout=WAIT)
    await page.go("#/partners")
    await page.page.wait_for_selector("main td:text-is('share')", timeout=WAIT)
    await page.go("#/tokens")
    await page.page.wait_for_selector("#token-form", timeout=WAIT)
    await page.page.fill("#token-form input[name=comment]", "from the console")
    await page.page.click("#token-form button[type=submit]")
    token = await (await page.page.wait_for_selector("#new-token textarea")).input_value()
    assert token.count(".") == 2, token  # a JWT
    status, about = await gateway.call(
        "GET", "/api/about", headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 200 and about["user"] == "admin"
    await page.go("#/nodes")
    await page.go("#/tokens")
    await page.page.wait_for_selector("main td:text-is('from the console')", timeout=WAIT)
    assert token not in (await page.page.content()), "a token is shown once"
    row = page.page.locator("tr", has_text="from the console")
    await row.locator("button:text-is('Revoke')").click()
    await page.page.wait_for_selector(
        "tr:has-text('from the console') >> button:text-is('Revoke')", state="detached"
    )
    status, _ = await gateway.call(
        "GET", "/api/about", headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 401
    page.check()


async def test_an_admin_creates_edits_disables_and_deletes_an_account_and_a_reader_cannot(
    gateway: Gateway, page: Watched
) -> None:
    file = gateway.env.root / "accounts" / "newcomer.yaml"
    secret = "newcomer-pass-7c1e"
    row = ".actions[data-object=newcomer]"
    await page.login("admin")
    await page.go("#/accounts")
    await page.page.wait_for_selector("main td:text-is('fixed')", timeout=WAIT)
    # The main file's account offers no change.
    assert await page.page.locator(".actions[data-object=fixed]").count() == 0
    await page.page.click("#object-new")
    await page.page.wait_for_selector("#object-yaml", timeout=WAIT)
    assert "never shown" in (await page.page.text_content("#object-help") or "")
    await page.page.fill("#object-name", "newcomer")
    await page.page.fill("#object-yaml", f'password: "{secret}"\nmax_uploads: -1\nenabled: true\n')
    await page.page.click("#object-save")
    problem = await page.page.wait_for_selector("#object-problems li", timeout=WAIT)
    message = await problem.text_content()
    assert message and message.startswith("line 2: ") and "max_uploads" in message, message
    assert await page.page.locator(".gutter span.bad[data-line='2']").count() == 1
    assert not file.exists(), "a refused account was written"
    assert (await gateway.call("GET", "/api/accounts/newcomer"))[0] == 404
    page.check(allowed_errors=1, what="the refused account")  # the browser logs the 400
    # Fixed, it is saved, hashed, in force, and listed.
    await page.page.fill("#object-yaml", f'password: "{secret}"\nmax_uploads: 2\nenabled: true\n')
    await page.page.click("#object-save")
    await page.page.wait_for_selector(f"{row} button[data-action=disable]", timeout=WAIT)
    await page.page.wait_for_selector("#notice .info:has-text('saved')", timeout=WAIT)
    text = file.read_text()
    assert "$argon2id$" in text and secret not in text, text
    status, shown = await gateway.call("GET", "/api/accounts/newcomer")
    assert status == 200 and shown["hasPassword"] and shown["maxUploads"] == 2, shown
    assert shown["enabled"] and shown["inMainFile"] is False, shown
    # Edited: the editor holds its fields and no password; saved as it is, the hash stays.
    await page.page.click(f"{row} button[data-action=edit]")
    await page.page.wait_for_selector("#object-yaml", timeout=WAIT)
    yaml_text = await page.page.input_value("#object-yaml")
    assert "max_uploads: 2" in yaml_text and "password" not in yaml_text, yaml_text
    assert "$argon2" not in await page.page.content()
    await page.page.click("#object-save")
    await page.page.wait_for_selector(f"{row} button[data-action=disable]", timeout=WAIT)
    hashed = [line for line in text.splitlines() if line.startswith("password: ")]
    assert len(hashed) == 1 and hashed[0] in file.read_text().splitlines(), "the hash changed"
    # Disabled, then deleted once confirmed.
    await page.page.click(f"{row} button[data-action=disable]")
    await page.page.wait_for_selector(f"{row} button[data-action=enable]", timeout=WAIT)
    status, shown = await gateway.call("GET", "/api/accounts/newcomer")
    assert status == 200 and shown["enabled"] is False and shown["hasPassword"], shown
    assert "enabled: false" in file.read_text()
    await shoot(page.page, gateway, "console-accounts")
    await page.page.click(f"{row} button[data-action=delete]")
    await page.page.click(f"{row} button[data-action=keep]")
    assert file.exists(), "kept when not confirmed"
    await page.page.click(f"{row} button[data-action=delete]")
    await page.page.click(f"{row} button[data-action=confirm-delete]")
    await page.page.wait_for_selector(row, state="detached", timeout=WAIT)
    assert not file.exists()
    assert (await gateway.call("GET", "/api/accounts/newcomer"))[0] == 404
    page.check(allowed_errors=1, what="the account's changes")
    # A reader sees the lists without a button.
    await page.page.click("#logout")
    await page.page.wait_for_selector("form#login", timeout=WAIT)
    await page.login("reader")
    for where, name in (("#/accounts", "fixed"), ("#/partners", "share"), ("#/users", "admin")):
        await page.go(where)
        await page.page.wait_for_selector(f"main td:text-is('{name}')", timeout=WAIT)
        assert await page.page.locator("#object-new").count() == 0, where
        assert await page.page.locator("main button").count() == 0, where
    page.check(allowed_errors=1, what="the reader's pages")
