"""The console in a real browser (Playwright driving Debian's Chromium) against the real stack:
`mlflow server --app-name basic-auth` with people and a role, Redis, the receiver, a worker and
`mlflow-gate console`. Each test signs in as one person, as they would.

Screenshots of each page are written to $CONSOLE_SCREENSHOTS when it is set (the README's
pictures in docs/ come from `CONSOLE_SCREENSHOTS=docs pytest tests/integration/test_console.py`),
else to the test's temporary folder."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Stack
from playwright.sync_api import Browser, Page, sync_playwright
from test_review import (
    PASSWORD,
    add_people,
    as_person,
    basic_auth_stack,
    new_version,
    wait_status,
)

from cli.devstack import free_port, http_ok, wait_until
from shared.deadletter import DeadLetterStore

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CONSOLE_SECRET = "a-console-secret-for-the-browser-tests-0123456789"
PEOPLE = ("alice", "bob", "carol", "dave", "erin", "olga")
POLICY = """
policies:
  - name: production-quality
    models: ["shop-*"]
    targets: [champion]
    rules:
      - metric: validation_accuracy
        min: 0.90
  - name: reviewed
    models: ["reviewed-*"]
    targets: [champion]
    rules:
      - metric: validation_accuracy
        min: 0.90
    review:
      approvals: 2
      reviewers: [alice, bob, carol]
"""
STRICTER = POLICY.replace("min: 0.90\n  - name: reviewed", "min: 0.96\n  - name: reviewed")


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    """The stack and the console's URL."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium", pytrace=False)
    with basic_auth_stack(tmp_path_factory.mktemp("console-stack"), POLICY, {}) as stack:
        add_people(stack, PEOPLE, "gate-operators", ["olga"])
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        console_env = {
            **stack.env,
            "GATE_CONSOLE_SECRET": CONSOLE_SECRET,
            "GATE_CONSOLE_ADMIN_ROLE": "gate-operators",
            "GATE_CONSOLE_URL": url,
        }
        proc = stack._start(
            "console",
            ["console", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            console_env,
        )
        proc.wait_ready(lambda: http_ok(f"{url}/healthz"), 30, "the console")
        yield stack, url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def signed_in(browser: Browser, url: str, who: str) -> Page:
    context = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto("/decisions")
    assert page.url.startswith(f"{url}/signin?next=")
    page.fill("input[name=username]", who)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#me")
    assert page.inner_text("#me") == who
    return page


def test_without_a_session_every_page_sends_you_to_sign_in(
    gate: tuple[Stack, str], browser: Browser, shots: Path
) -> None:
    _, url = gate
    context = browser.new_context(base_url=url)
    page = context.new_page()
    page.goto("/reviews")
    assert page.url == f"{url}/signin?next=/reviews"
    page.screenshot(path=str(shots / "console-signin.png"))
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "not-her-password")
    page.click("button[type=submit]")
    assert "MLflow refused that user name and password" in page.inner_text("main")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#me")
    assert page.url == f"{url}/reviews"  # back where they were going
    context.close()


def test_find_a_rejected_decision_and_read_its_failed_check(
    gate: tuple[Stack, str], browser: Browser, shots: Path
) -> None:
    stack, _ = gate
    model = "shop-ranker"
    good = new_version(stack, model, 0.95)
    stack.client.set_model_version_tag(model, good, "governance.request", "champion")
    wait_status(stack, model, good, "approved")
    bad = new_version(stack, model, 0.72)
    stack.client.set_model_version_tag(model, bad, "governance.request", "champion")
    wait_status(stack, model, bad, "rejected")

    page = signed_in(browser, gate[1], "dave")
    page.select_option("select[name=outcome]", "rejected")
    page.fill("input[name=model]", "shop-*")
    page.click("text=Filter")
    rows = page.locator("#decisions tbody tr")
    assert rows.count() == 1
    assert "rejected" in rows.first.inner_text()
    page.screenshot(path=str(shots / "console-decisions.png"))
    rows.first.locator("a").first.click()
    failed = page.locator("#checks tr.failed")
    assert failed.count() == 1
    text = failed.first.inner_text()
    assert "✗ FAILED" in text and "validation_accuracy" in text and "0.72" in text
    assert ">= 0.9" in text and "enforced" in text
    link = page.get_attribute("text=open in the registry's UI", "href")
    assert link == f"{stack.mlflow_uri}/#/models/{model}/versions/{bad}"
    page.screenshot(path=str(shots / "console-decision.png"), full_page=True)

    # The model's page: who holds champion since when, by which decision.
    page.click(f"dd >> text={model}")
    timeline = page.locator(".timeline[data-target=champion]")
    assert "HOLDS IT NOW" in timeline.inner_text()
    holder_row = timeline.locator("tr", has_text="HOLDS IT NOW").inner_text()
    assert holder_row.startswith(good)
    page.screenshot(path=str(shots / "console-model.png"), full_page=True)


def test_a_second_reviewer_approves_and_the_alias_moves(
    gate: tuple[Stack, str], browser: Browser, shots: Path
) -> None:
    stack, _ = gate
    model = "reviewed-fraud"
    version = new_version(stack, model, 0.95)
    asked = as_person(stack, "erin", "request", model, version, "--target", "champion")
    assert asked.returncode == 0, asked.stderr
    wait_status(stack, model, version, "pending_review")
    first = as_person(stack, "bob", "review", "approve", model, version, "--target", "champion")
    assert first.returncode == 0, first.stderr

    page = signed_in(browser, gate[1], "carol")
    page.click("nav >> text=Reviews")
    card = page.locator(f".review[data-model={model}]")
    assert "1 of 2: bob" in card.locator(".approvals").inner_text()
    assert "validation_accuracy" in card.inner_text()
    page.screenshot(path=str(shots / "console-reviews.png"), full_page=True)
    card.locator("textarea[name=comment]").fill("fairness report read; fine")
    card.locator("button[value=approve]").click()
    assert "carol approved reviewed-fraud" in page.inner_text(".flash.ok").lower()
    wait_until(
        lambda: stack.alias_version(model, "champion") == version,
        60,
        what=f"the alias to move\n{stack.logs()}",
    )
    wait_status(stack, model, version, "approved")

    # Decided: it waits for nobody any more.
    erin = signed_in(browser, gate[1], "erin")
    erin.click("nav >> text=Reviews")
    assert f"reviewed-fraud version {version}" not in erin.inner_text("main")


def test_an_operator_replays_a_dead_letter(
    gate: tuple[Stack, str], browser: Browser, shots: Path
) -> None:
    stack, _ = gate
    model = "shop-churn"
    version = new_version(stack, model, 0.93)
    # A real dead letter: a worker that cannot reach MLflow runs out of retries on the event.
    stack.stop("worker")
    stack.start_worker("broken", env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    stack.client.set_model_version_tag(model, version, "governance.request", "champion")
    store = DeadLetterStore(stack.redis)

    def dead() -> list[str]:
        return [e.id for e in store.all() if e.model == model]

    wait_until(lambda: bool(dead()), 60, what=f"the dead letter\n{stack.logs()}")
    (entry_id,) = dead()
    stack.stop("broken")
    stack.start_worker()
    assert stack.version_tags(model, version).get("governance.status") is None

    # Someone who is not an operator sees it, and may not replay it.
    dave = signed_in(browser, gate[1], "dave")
    dave.click("nav >> text=Dead letters")
    assert entry_id in dave.inner_text("#dead-letters")
    assert dave.is_disabled("text=Replay selected")
    forged = dave.context.request.post(
        f"{gate[1]}/dead-letters/replay", form={"id": entry_id}, max_redirects=0
    )
    assert forged.status == 400 and "anti-forgery token" in forged.text()
    assert store.get(entry_id) is not None

    olga = signed_in(browser, gate[1], "olga")  # a member of GATE_CONSOLE_ADMIN_ROLE
    olga.click("nav >> text=Dead letters")
    health = olga.inner_text("#health")
    assert "MLflow\nup" in health and "Redis\nup" in health and "Workers\n1" in health
    olga.check(f"input[value='{entry_id}']")
    olga.screenshot(path=str(shots / "console-dead-letters.png"), full_page=True)
    olga.click("text=Replay selected")
    assert "replayed 1, failed 0" in olga.inner_text(".flash.ok")
    wait_status(stack, model, version, "approved")
    assert stack.alias_version(model, "champion") == version
    assert store.get(entry_id) is None


def test_what_if_a_stricter_policy_flips_a_decision(
    gate: tuple[Stack, str], browser: Browser, shots: Path
) -> None:
    stack, _ = gate
    model = "shop-pricing"
    version = new_version(stack, model, 0.93)  # passes 0.90, would fail 0.96
    stack.client.set_model_version_tag(model, version, "governance.request", "champion")
    wait_status(stack, model, version, "approved")

    page = signed_in(browser, gate[1], "alice")
    page.click("nav >> text=Policy")
    assert "production-quality" in page.inner_text("#active-policies")
    page.fill("textarea[name=policy]", STRICTER)
    page.fill("input[name=last]", "50")
    page.click("text=Run what if")
    summary = page.inner_text("#what-if-summary")
    assert re.match(r"\d+ of \d+ decisions would flip", summary), summary
    flipped = page.locator("#what-if-results tr.flip", has_text=model)
    assert flipped.count() == 1
    row = flipped.first.inner_text()
    assert "FLIPS" in row and "approved" in row and "rejected" in row
    page.screenshot(path=str(shots / "console-policy-what-if.png"), full_page=True)

    # The same from the command line: exit 1 when a decision would flip.
    proposed = stack.workdir / "stricter.yaml"
    proposed.write_text(STRICTER)
    cli = stack.gate("policy", "test", str(proposed), "--last", "50", check=False)
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert model in cli.stdout


def test_screenshots_are_kept_for_the_readme(shots: Path) -> None:
    """When asked to (CONSOLE_SCREENSHOTS=docs), the pictures land where the README shows them."""
    if os.environ.get("CONSOLE_SCREENSHOTS"):
        assert len(list(shots.glob("console-*.png"))) >= 6
