"""Schemathesis hooks for the WiPay gateways (loaded with SCHEMATHESIS_HOOKS=hooks, PYTHONPATH=ops/schemathesis).

* String formats of docs/openapi.yaml that carry a limit in UTF-8 bytes (`utf8-max-N-bytes`): generated
  values stay within N bytes and hold no control characters.
* Device signatures for the phone-gateway: a request whose `X-Signature` header is the placeholder
  `wipay-sign-me` (set with `-H` for every call, next to `X-Device-Id`) is signed just before it is sent,
  over the exact bytes that go on the wire, with the Ed25519 key in WIPAY_SCHEMATHESIS_DEVICE_KEY (raw 32
  bytes, base64url). `X-Signature-Version: 2` gets the version-2 signed string. Requests whose auth
  Schemathesis removed or replaced on purpose (its `ignored_auth` probes) no longer carry the
  placeholder and go out unsigned, as they should.
"""

import base64
import hashlib
import os
import time

import requests
import schemathesis
from hypothesis import strategies as st

SIGN_ME = "wipay-sign-me"


def _text_within(max_bytes):
    characters = st.characters(
        blacklist_categories=("Cs",), blacklist_characters=[chr(c) for c in range(0x20)] + [chr(c) for c in range(0x7F, 0xA0)]
    )
    return st.text(alphabet=characters, max_size=max_bytes).filter(lambda s: len(s.encode("utf-8")) <= max_bytes)


for _limit in (64, 256, 2048):
    schemathesis.openapi.format("utf8-max-%d-bytes" % _limit, _text_within(_limit))


def _b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class DeviceSigner(requests.auth.AuthBase):
    """Signs a prepared request as an enrolled phone does (docs/openapi.yaml, tag `phone`)."""

    def __init__(self, raw_private_key):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.key = Ed25519PrivateKey.from_private_bytes(raw_private_key)
        # Ed25519 is deterministic and the gateway accepts a signature once: never sign the same string twice.
        self.used = set()

    def __call__(self, request):
        # Schemathesis drops a header on purpose to see it refused: sign only what still has all three.
        if request.headers.get("X-Signature") != SIGN_ME or "X-Timestamp" not in request.headers:
            return request
        if "X-Device-Id" not in request.headers:
            return request
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode("utf-8")
        body_hash = hashlib.sha256(body).hexdigest()
        version = request.headers.get("X-Signature-Version")
        idempotency_key = request.headers.get("Idempotency-Key", "")
        if isinstance(idempotency_key, bytes):
            idempotency_key = idempotency_key.decode("latin-1")
        now = int(time.time())
        message = None
        for back in range(0, 280):
            timestamp = str(now - back)
            if version == "2":
                candidate = "wipay-sig-2\n%s\n%s\n%s\n%s\n%s" % (
                    request.method, request.path_url, timestamp, body_hash, idempotency_key)
            else:
                candidate = "%s\n%s\n%s\n%s" % (request.method, request.path_url, timestamp, body_hash)
            if candidate not in self.used:
                message = candidate
                break
        if message is None:
            return request
        self.used.add(message)
        request.headers["X-Timestamp"] = timestamp
        request.headers["X-Signature"] = _b64url(self.key.sign(message.encode("utf-8")))
        return request


_KEY = os.environ.get("WIPAY_SCHEMATHESIS_DEVICE_KEY")
_SIGNER = DeviceSigner(_b64url_decode(_KEY)) if _KEY else None


@schemathesis.hook
def before_call(context, case, kwargs):
    if _SIGNER is not None:
        kwargs["auth"] = _SIGNER
