#!/usr/bin/env python3
"""The counter and wallet pages in a real Chromium (Debian's, through Debian's chromedriver).

Run by Tests/EndToEndTests/BrowserE2ETests.swift against a whole running system, which passes in the
environment:

  WIPAY_POS_URL, WIPAY_PHONE_URL      the gateways
  WIPAY_TERMINAL_KEY                  a till of WIPAY_MERCHANT_NAME ("counter 1")
  WIPAY_HOSTILE_TERMINAL_KEY          a till of a merchant named WIPAY_HOSTILE_NAME (markup)
  WIPAY_ENROLLMENT_CODE, WIPAY_PIN    a funded wallet, not yet enrolled
  WIPAY_EXPIRED_PAYLOAD               a genuine payload (signed with the system's key) already expired
  WIPAY_CONSOLE_URL                   `payctl console` of the same system, started before the payment
  WIPAY_WALLET_TLS_URL                the phone-gateway's HTTPS endpoint (a self-signed certificate)
  WIPAY_SCREENSHOTS                   the folder the screenshots go to

Scenario: the counter charges 12.50; the wallet enrolls (the key made in the browser), refuses a forged
and an expired payload, pays with a wrong PIN (declined on both pages, request still open), then with the
right one (succeeded on both pages, with the completion notice); a merchant named with markup is shown
literally on both pages and runs nothing. The operations console lists every stage, counts the payment,
shows its trace, reconciles, and drains the notifier only once its name is typed. No page logs a
Content-Security-Policy violation or an uncaught error. Prints one JSON line; exits 1 on any failed check.
"""

import json
import os
import sys
import time

os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download anything

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
    TimeoutException,
    UnexpectedAlertPresentException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ENV = os.environ
POS = ENV["WIPAY_POS_URL"].rstrip("/")
PHONE = ENV["WIPAY_PHONE_URL"].rstrip("/")
SHOTS = ENV["WIPAY_SCREENSHOTS"]
MERCHANT = ENV["WIPAY_MERCHANT_NAME"]
HOSTILE = ENV["WIPAY_HOSTILE_NAME"]
PIN = ENV["WIPAY_PIN"]
WRONG_PIN = "1111" if PIN != "1111" else "2222"

failures = []
checks = 0


def check(ok, what):
    global checks
    checks += 1
    print(("ok    " if ok else "FAIL  ") + what, file=sys.stderr, flush=True)
    if not ok:
        failures.append(what)
    return ok


def browser(width, height, insecure_tls=False):
    options = webdriver.ChromeOptions()
    if insecure_tls:
        options.add_argument("--ignore-certificate-errors")  # the test's self-signed certificate only
    options.binary_location = "/usr/bin/chromium"
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
        "--disable-extensions", "--disable-background-networking", "--lang=en-US",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def wait(driver, condition, what, timeout=20):
    try:
        # The console redraws its tables every second or two: an element read mid-redraw is tried again.
        WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda d: condition(d))
        return check(True, what)
    except TimeoutException:
        return check(False, what + " (timed out)")


def el(driver, element_id):
    return driver.find_element(By.ID, element_id)


def visible(driver, element_id):
    return el(driver, element_id).is_displayed()


def text(driver, element_id):
    return el(driver, element_id).text


def fill(driver, element_id, value):
    field = el(driver, element_id)
    field.clear()
    field.send_keys(value)


def set_value(driver, element_id, value):
    # A payload is long: set it as a paste would, then tell the page.
    driver.execute_script(
        "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
        "e.dispatchEvent(new Event('input', {bubbles: true}));", element_id, value)


def shot(driver, name):
    os.makedirs(SHOTS, exist_ok=True)
    driver.save_screenshot(os.path.join(SHOTS, name))


def injected(driver):
    """Elements or dialogs a hostile name would have made if it had been treated as markup."""
    return driver.execute_script("return document.querySelectorAll('img[src=\"x\"], [onerror]').length")


def page_problems(driver):
    problems = []
    for entry in driver.get_log("browser"):
        message = entry.get("message", "")
        if "Content Security Policy" in message or "Uncaught" in message or "Refused to" in message:
            problems.append(message)
    return problems


def crc16(data):
    """CRC-16/CCITT-FALSE as 4 uppercase hex digits (EMVCo's tag 63)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return "%04X" % crc


def enter_pin(driver, pin):
    driver.find_element(By.CSS_SELECTOR, '#pinpad button[data-key="clear"]').click()
    for digit in pin:
        driver.find_element(By.CSS_SELECTOR, f'#pinpad button[data-key="{digit}"]').click()


def counter_setup(pos, key):
    pos.get(POS + "/pos/")
    wait(pos, lambda d: visible(d, "key-setup"), "the counter asks for the terminal key")
    fill(pos, "key-input", key)
    el(pos, "key-save").click()
    wait(pos, lambda d: visible(d, "charge"), "the counter accepts the key and shows the charge form")
    check(key not in pos.current_url, "the terminal key is not in the URL")
    wait(pos, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-stream") == "open",
         "the counter's event stream is open")


def charge(pos, amount, reference):
    fill(pos, "amount", amount)
    fill(pos, "reference", reference)
    el(pos, "charge-button").click()
    wait(pos, lambda d: visible(d, "current") and text(d, "current-status") == "pending",
         f"the counter shows the new request {reference} as pending")
    wait(pos, lambda d: d.execute_script(
        "const i = document.getElementById('current-qr'); return i.complete && i.naturalWidth > 0;"),
        "the counter shows the request's QR code")
    return el(pos, "current-payload").get_attribute("value")


def wallet_check(wallet, payload):
    if visible(wallet, "result") or visible(wallet, "confirm"):
        el(wallet, "done-button" if visible(wallet, "result") else "back-button").click()
    wait(wallet, lambda d: visible(d, "pay"), "the wallet is ready for a payload")
    set_value(wallet, "payload", payload)
    el(wallet, "check-button").click()


def console_checks(console, paid_request):
    console.get(ENV["WIPAY_CONSOLE_URL"].rstrip("/") + "/console/")
    stages = ["ledger", "notifier", "payment-router", "phone-gateway", "pos-gateway"]

    def services(d):
        return set(d.execute_script(
            "return Array.from(document.querySelectorAll('#instance-rows tr'), r => r.dataset.service)"))

    wait(console, lambda d: set(stages) <= services(d), "the console lists every stage", timeout=30)
    wait(console, lambda d: "healthy" in text(d, "instance-rows"), "the console shows the instances' health")
    wait(console, lambda d: d.find_elements(By.CSS_SELECTOR, '#outcome-rows tr[data-outcome="succeeded"]'),
         "the console counted the payment among the outcomes")
    check(len(console.find_elements(By.CSS_SELECTOR, "#rate-chart rect")) >= 1, "the rate chart has a bar")
    fill(console, "trace-id", paid_request)
    el(console, "trace-button").click()
    wait(console, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#trace-rows tr")) >= 3 and "succeeded" in text(d, "trace-summary"),
         "the console shows the payment's trace")
    el(console, "reconcile-button").click()
    wait(console, lambda d: text(d, "reconcile-status") == "all invariants hold", "the console's reconcile passes", timeout=60)
    # Clicked in one script: the table may be redrawn between finding the button and clicking it.
    instance = console.execute_script(
        "const b = document.querySelector('#instance-rows tr[data-service=\"notifier\"] button[data-drain]');"
        "if (!b) return null; b.click(); return b.dataset.drain;")
    check(instance is not None, "the console offers to drain the notifier")
    wait(console, lambda d: visible(d, "drain-panel"), "drain asks for a confirmation")
    fill(console, "drain-confirm", "not-" + instance)
    el(console, "drain-button").click()
    wait(console, lambda d: "exactly" in text(d, "drain-message"), "a wrong confirmation drains nothing")
    check(visible(console, "drain-panel"), "the drain is still waiting for its confirmation")
    shot(console, "console-drain.png")
    fill(console, "drain-confirm", instance)
    el(console, "drain-button").click()
    wait(console, lambda d: "is draining" in text(d, "drain-message"), "the typed confirmation drains the notifier")

    def notifier_state(d):
        row = d.execute_script(
            "const r = document.querySelector('#instance-rows tr[data-instance=\"' + arguments[0] + '\"]');"
            "return r ? r.textContent : null;", instance)
        return "gone" if row is None else row

    wait(console, lambda d: notifier_state(d) == "gone" or "draining" in notifier_state(d),
         "the console shows the notifier draining or gone", timeout=30)


def main():
    pos = browser(1024, 1000)
    wallet = browser(390, 844)  # a phone's width
    result = {}
    try:
        # 1. The counter charges 12.50.
        counter_setup(pos, ENV["WIPAY_TERMINAL_KEY"])
        payload = charge(pos, "12.50", "browser-1")
        check(text(pos, "current-amount") == "12.50 CNY", "the counter shows 12.50 CNY")
        check(text(pos, "current-merchant") == MERCHANT, "the counter shows the merchant's name")
        check(payload.startswith("000201"), "the counter holds the payload")
        shot(pos, "counter-pending.png")

        # 2. The wallet enrolls: the key pair is made in the browser.
        wallet.get(PHONE + "/wallet/")
        wait(wallet, lambda d: visible(d, "enroll") or visible(d, "unsupported"), "the wallet page loads")
        if visible(wallet, "unsupported"):
            check(False, "this Chromium can hold a wallet: " + text(wallet, "unsupported-why"))
            raise SystemExit(1)
        fill(wallet, "enroll-code", ENV["WIPAY_ENROLLMENT_CODE"])
        el(wallet, "enroll-button").click()
        wait(wallet, lambda d: visible(d, "pay") and text(d, "balance") == "1000.00 CNY",
             "the wallet is enrolled and shows the balance 1000.00 CNY")
        wait(wallet, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-stream") == "open",
             "the wallet's event stream is open")
        extractable = wallet.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const open = indexedDB.open("wipay-wallet", 1);
            open.onsuccess = () => {
              const get = open.result.transaction("device").objectStore("device").get("current");
              get.onsuccess = () => done(get.result && get.result.privateKey ? get.result.privateKey.extractable : null);
            };""")
        check(extractable is False, "the device's private key is kept non-extractable")

        # 3. A forged payload and an expired one are shown as such and cannot be paid.
        # The amount raised from 12.50 to 92.50 and the CRC made right again: only the signature can tell.
        check("01041250" in payload, "the payload carries the amount 1250")
        forged_body = payload.replace("01041250", "01049250", 1)[:-4]
        forged = forged_body + crc16(forged_body.encode("utf-8"))
        wallet_check(wallet, forged)
        wait(wallet, lambda d: "the signature does not match" in text(d, "pay-message"), "a forged payload is refused")
        check(not visible(wallet, "confirm"), "a forged payload offers no way to pay")
        wallet_check(wallet, ENV["WIPAY_EXPIRED_PAYLOAD"])
        wait(wallet, lambda d: text(d, "pay-message").startswith("Expired"), "an expired payload is shown as expired")
        check(not visible(wallet, "confirm"), "an expired payload offers no way to pay")
        shot(wallet, "wallet-expired.png")

        # 4. A wrong PIN: declined on both pages, the request stays open.
        wallet_check(wallet, payload)
        wait(wallet, lambda d: visible(d, "confirm"), "a genuine payload is shown for confirmation")
        check(text(wallet, "confirm-amount") == "12.50 CNY", "the wallet shows 12.50 CNY")
        check(text(wallet, "confirm-payee") == MERCHANT + " — counter 1", "the wallet shows the merchant and the till")
        shot(wallet, "wallet-confirm.png")
        enter_pin(wallet, WRONG_PIN)
        el(wallet, "pay-button").click()
        wait(wallet, lambda d: visible(d, "result") and text(d, "result-status") == "declined", "a wrong PIN is declined")
        check("incorrect_pin" in text(wallet, "result-text"), "the wallet says the PIN was wrong")
        wait(pos, lambda d: "Attempt declined (incorrect_pin)" in text(d, "current-message"),
             "the counter shows the declined attempt live")
        check(text(pos, "current-status") == "pending", "the request is still pending after a declined attempt")
        shot(pos, "counter-attempt-declined.png")

        # 5. The right PIN: succeeded on both pages, once.
        wallet_check(wallet, payload)
        wait(wallet, lambda d: visible(d, "confirm"), "the payload is offered again")
        enter_pin(wallet, PIN)
        el(wallet, "pay-button").click()
        wait(wallet, lambda d: visible(d, "result") and text(d, "result-status") == "succeeded", "the wallet pays")
        wait(wallet, lambda d: "payment.succeeded" in text(d, "result-notice"), "the wallet receives the completion notice")
        wait(wallet, lambda d: text(d, "balance") == "987.50 CNY", "the wallet's balance is 987.50 CNY")
        shot(wallet, "wallet-succeeded.png")
        wait(pos, lambda d: text(d, "current-status") == "succeeded" and visible(d, "receipt"),
             "the counter shows succeeded with a receipt, live")
        check(text(pos, "receipt-payer") not in ("", "?"), "the receipt names the payer's masked alias")
        check(not visible(pos, "cancel-button"), "a paid request can no longer be canceled")
        check(visible(pos, "refund-button"), "a paid request offers a refund")
        wait(pos, lambda d: "browser-1" in text(d, "day-rows") and "succeeded" in text(d, "day-rows"),
             "today's list at this till shows the request as succeeded")
        result["paid_request"] = text(pos, "current-id")
        shot(pos, "counter-succeeded.png")

        # 6. A merchant named with markup: shown literally on both pages, nothing runs.
        el(pos, "forget-key").click()
        counter_setup(pos, ENV["WIPAY_HOSTILE_TERMINAL_KEY"])
        hostile_payload = charge(pos, "1.00", "browser-hostile")
        check(text(pos, "current-merchant") == HOSTILE, "the counter shows the hostile name as text")
        wait(pos, lambda d: "browser-hostile" in text(d, "day-rows") and "browser-1" not in text(d, "day-rows"),
             "today's list shows this till's requests only")
        check(injected(pos) == 0, "the hostile name made no element on the counter")
        wallet_check(wallet, hostile_payload)
        wait(wallet, lambda d: visible(d, "confirm"), "the hostile merchant's payload verifies")
        check(text(wallet, "confirm-payee").startswith(HOSTILE), "the wallet shows the hostile name as text")
        check(injected(wallet) == 0, "the hostile name made no element in the wallet")
        shot(wallet, "wallet-hostile-name.png")
        el(wallet, "back-button").click()
        el(pos, "cancel-button").click()
        wait(pos, lambda d: text(d, "current-status") == "canceled", "the counter cancels the hostile request")

        # 7. The operations console.
        console = browser(1280, 1500)
        try:
            console_checks(console, result["paid_request"])
            console.execute_script("window.scrollTo(0, 0)")
            shot(console, "console.png")
            check(not page_problems(console), "the console logged no CSP violation or uncaught error")
        finally:
            console.quit()

        # 8. The wallet over HTTPS, as a phone on the shop's network opens it: a secure context, WebCrypto there.
        phone = browser(390, 844, insecure_tls=True)
        try:
            phone.get(ENV["WIPAY_WALLET_TLS_URL"].rstrip("/") + "/wallet/")
            wait(phone, lambda d: visible(d, "enroll") or visible(d, "unsupported"), "the wallet loads over HTTPS")
            check(phone.execute_script("return window.isSecureContext && location.protocol === 'https:'"),
                  "the wallet over HTTPS is a secure context")
            check(visible(phone, "enroll"), "the wallet over HTTPS can make a device key")
            keys = phone.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "fetch('/v1/payload-keys').then(r => r.json()).then(j => done(j.keys.length), () => done(-1));")
            check(keys >= 1, "the wallet over HTTPS reaches the API on its own origin")
            shot(phone, "wallet-https.png")
        finally:
            phone.quit()

        for name, driver in (("counter", pos), ("wallet", wallet)):
            problems = page_problems(driver)
            check(not problems, f"the {name} page logged no CSP violation or uncaught error {problems[:3]}")
    except UnexpectedAlertPresentException as error:
        check(False, f"a page opened a dialog (script ran from data?): {error}")
    finally:
        pos.quit()
        wallet.quit()
    result.update({"checks": checks, "failures": failures})
    print(json.dumps(result))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
