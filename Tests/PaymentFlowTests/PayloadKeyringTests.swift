// Payload key rotation in the router: the new key signs, the previous keys still verify and are published.

import Crypto
import Foundation
@testable import PaymentRouterService
import Testing
import WiPayPayload
import WiPayRuntime

@Suite("Router payload keyring", .timeLimit(.minutes(1)))
struct PayloadKeyringTests {
    static let payload = PaymentPayload(
        requestId: "pr_rotation", merchantId: "mer_rotation", merchantName: "Rotation Cafe", amountMinor: 500,
        currency: "CNY", expiresAtSeconds: 2_000_000_000)

    @Test func previousKeysStillVerifyAndArePublishedAfterTheSigningKey() throws {
        let old = Curve25519.Signing.PrivateKey()
        let new = Curve25519.Signing.PrivateKey()
        let signedWithOld = try PayloadSigner(privateKey: old).sign(Self.payload)
        let keyring = PayloadKeyring(privateKey: new, previous: [old, old])
        #expect(keyring.publicKeys.keys.map(\.keyId) == [PayloadSigner(privateKey: new).keyId, PayloadSigner(privateKey: old).keyId])
        #expect(try keyring.verify(signedWithOld, nowSeconds: 0) == Self.payload)
        #expect(PayloadVerifier.keyId(of: try keyring.sign(Self.payload)) == PayloadSigner(privateKey: new).keyId)
        // Without the previous key, the old payload is refused.
        #expect(throws: PayloadError.self) { try PayloadKeyring(privateKey: new).verify(signedWithOld, nowSeconds: 0) }
    }

    @Test func loadsPreviousKeyFilesAndRefusesABadOne() throws {
        let dir = NSTemporaryDirectory() + "wipay-keyring-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try PayloadKeyFile.generate(path: dir + "/old")
        _ = try PayloadKeyFile.generate(path: dir + "/new")
        let keyring = try PayloadKeyring.load(
            ConfigValues(environment: ["WIPAY_PAYLOAD_KEY_FILE": dir + "/new", "WIPAY_PAYLOAD_PREVIOUS_KEY_FILES": dir + "/old"]))
        #expect(keyring.publicKeys.keys.count == 2)
        #expect(throws: ConfigError.self) {
            try PayloadKeyring.load(
                ConfigValues(environment: ["WIPAY_PAYLOAD_KEY_FILE": dir + "/new", "WIPAY_PAYLOAD_PREVIOUS_KEY_FILES": dir + "/missing"]))
        }
    }
}
