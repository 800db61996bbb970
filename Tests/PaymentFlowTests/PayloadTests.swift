import Crypto
import Testing
import WiPayPayload

@Suite struct PayloadTests {
    let key = Curve25519.Signing.PrivateKey()
    let sample = PaymentPayload(
        requestId: "pr_abcdefghijklmnopqrst", merchantId: "mer_abcdefghijklmnop", merchantName: "Blue Bottle Café 咖啡",
        amountMinor: 1250, currency: "CNY", expiresAtSeconds: 1_900_000_000)

    var verifier: PayloadVerifier {
        let signer = PayloadSigner(privateKey: key)
        return PayloadVerifier(keys: [signer.keyId: signer.publicKeyBytes])
    }

    @Test func crcMatchesTheStandardCheckValue() {
        #expect(CRC16.checksum(Array("123456789".utf8)) == 0x29B1)
        #expect(CRC16.hex(of: Array("123456789".utf8)) == "29B1")
    }

    @Test func signedPayloadVerifiesAndCarriesEveryField() throws {
        let text = try PayloadSigner(privateKey: key).sign(sample)
        #expect(text.hasPrefix("000201010212"))
        #expect(text.utf8.count <= 2048)
        let back = try verifier.verify(text, nowSeconds: 1_800_000_000)
        #expect(back == sample)
        #expect(PayloadVerifier.keyId(of: text) == PayloadSigner(privateKey: key).keyId)
    }

    @Test func expiredPayloadIsReportedAsExpired() throws {
        let text = try PayloadSigner(privateKey: key).sign(sample)
        #expect(throws: PayloadError.expired(sample)) { try verifier.verify(text, nowSeconds: 1_900_000_001) }
    }

    @Test func everyTruncationIsRefused() throws {
        let text = try PayloadSigner(privateKey: key).sign(sample)
        let scalars = Array(text.unicodeScalars)
        for n in 0..<scalars.count {
            let cut = String(String.UnicodeScalarView(scalars[..<n]))
            #expect(throws: PayloadError.self) { try verifier.verify(cut, nowSeconds: 0) }
        }
    }

    @Test func everySingleCharacterChangeIsRefused() throws {
        let text = try PayloadSigner(privateKey: key).sign(sample)
        let scalars = Array(text.unicodeScalars)
        for i in scalars.indices {
            var changed = scalars
            changed[i] = changed[i] == "7" ? "8" : "7"
            let altered = String(String.UnicodeScalarView(changed))
            #expect(throws: PayloadError.self) { try verifier.verify(altered, nowSeconds: 0) }
        }
    }

    @Test func alteredAmountWithARecomputedCRCFailsTheSignature() throws {
        let text = try PayloadSigner(privateKey: key).sign(sample)
        let altered = text.replacingOccurrences(of: "01041250", with: "01041999")
        #expect(altered != text)
        let body = String(altered.dropLast(4))
        let recrc = body + CRC16.hex(of: Array(body.utf8))
        #expect(throws: PayloadError.invalid("bad signature")) { try verifier.verify(recrc, nowSeconds: 0) }
    }

    @Test func payloadSignedBySomeoneElseIsRefused() throws {
        let forger = PayloadSigner(privateKey: Curve25519.Signing.PrivateKey())
        let forged = try forger.sign(sample)
        #expect(throws: PayloadError.self) { try verifier.verify(forged, nowSeconds: 0) }
        // Even when the forger reuses our key id, the signature does not verify.
        let ourId = PayloadSigner(privateKey: key).keyId
        let swapped = forged.replacingOccurrences(of: forger.keyId, with: ourId)
        let body = String(swapped.dropLast(4))
        #expect(throws: PayloadError.self) {
            try verifier.verify(body + CRC16.hex(of: Array(body.utf8)), nowSeconds: 0)
        }
    }

    @Test func fieldsThatCannotBeCarriedAreRefusedWhenSigning() {
        let signer = PayloadSigner(privateKey: key)
        var bad = sample
        bad.amountMinor = 0
        #expect(throws: PayloadError.self) { try signer.sign(bad) }
        bad = sample
        bad.currency = "cny"
        #expect(throws: PayloadError.self) { try signer.sign(bad) }
        bad = sample
        bad.requestId = "pr 1"
        #expect(throws: PayloadError.self) { try signer.sign(bad) }
    }

    @Test func longNamesAreCutTo95Characters() throws {
        var long = sample
        long.merchantName = String(repeating: "é", count: 100)
        let back = try verifier.verify(try PayloadSigner(privateKey: key).sign(long), nowSeconds: 0)
        #expect(back.merchantName == String(repeating: "é", count: 95))
    }

    @Test func theTillAndTheCreationTimeAreSignedAndOlderPayloadsStillVerify() throws {
        var withTill = sample
        withTill.terminalName = "till 1 — 收银台"
        withTill.createdAtSeconds = 1_899_999_880
        let signer = PayloadSigner(privateKey: key)
        let text = try signer.sign(withTill)
        let back = try verifier.verify(text, nowSeconds: 1_899_999_900)
        #expect(back == withTill)
        #expect(back.payee == "Blue Bottle Café 咖啡 — till 1 — 收银台")
        // Relabelling the till (and fixing up the CRC) breaks the signature.
        let relabelled = text.replacingOccurrences(of: "till 1", with: "till 2")
        let body = String(relabelled.dropLast(4))
        #expect(throws: PayloadError.invalid("bad signature")) {
            try verifier.verify(body + CRC16.hex(of: Array(body.utf8)), nowSeconds: 1_899_999_900)
        }
        // A payload signed before the till was carried has neither field and still verifies.
        let old = try verifier.verify(try signer.sign(sample), nowSeconds: 0)
        #expect(old.terminalName == nil && old.createdAtSeconds == nil)
        #expect(old.payee == sample.merchantName)
        // Long till names are cut to 60 characters; control characters are refused.
        var long = sample
        long.terminalName = String(repeating: "t", count: 80)
        #expect(try verifier.verify(try signer.sign(long), nowSeconds: 0).terminalName == String(repeating: "t", count: 60))
        var escape = sample
        escape.terminalName = "till\u{1b}[2J"
        #expect(throws: PayloadError.self) { try signer.sign(escape) }
        var backwards = sample
        backwards.createdAtSeconds = sample.expiresAtSeconds + 1
        #expect(throws: PayloadError.self) { try signer.sign(backwards) }
    }

    @Test func garbageIsRefusedNotCrashed() {
        for text in ["", "hello", "0002", "00020199", String(repeating: "9", count: 5000), "000201010212630400"] {
            #expect(throws: PayloadError.self) { try verifier.verify(text, nowSeconds: 0) }
        }
    }

    @Test func keyFileRoundTrip() throws {
        let key = Curve25519.Signing.PrivateKey()
        let parsed = try PayloadKeyFile.parse(PayloadKeyFile.text(of: key))
        #expect(parsed.rawRepresentation == key.rawRepresentation)
        #expect(throws: PayloadKeyFile.KeyError.self) { try PayloadKeyFile.parse("not a key") }
    }
}
