import ArgumentParser
import Foundation
import WiPayBus
import WiPayPayload

struct Keys: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "CurveZMQ keys of the bus and the payload signing key.", subcommands: [Generate.self, PayloadKey.self])

    struct Generate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create the CurveZMQ key pairs of the bus, every service and ops (payctl), if missing.",
            discussion: """
                Writes <dir>/<name>.key (public and secret, mode 600) and <dir>/<name>.pub for bus, ledger, \
                payment-router, notifier, pos-gateway, phone-gateway and ops, and copies every public key into \
                <dir>/authorized/, the keys the broker and the control sockets admit. Existing keys are kept. \
                Give the folder to every process as WIPAY_CURVE_KEYS_DIR. To add a key pair (a second ops \
                user, say) pass --name; to shut a key out, delete its file from authorized/ and restart the bus.
                """)
        @Option(help: "The keys folder. [env WIPAY_CURVE_KEYS_DIR]") var dir: String?
        @Option(help: "Make only this key pair (repeatable); default: the standard set.") var name: [String] = []
        @Flag(help: "Print one JSON object on stdout.") var json = false

        func run() async throws {
            let folder = dir ?? ProcessInfo.processInfo.environment["WIPAY_CURVE_KEYS_DIR"] ?? ""
            guard !folder.isEmpty else { throw ValidationError("give --dir DIR (or WIPAY_CURVE_KEYS_DIR)") }
            let names = name.isEmpty ? BusKeys.standardNames : name
            let created: [String]
            do {
                created = try BusKeys.generate(dir: folder, names: names)
            } catch {
                throw Failure("\(error)")
            }
            if json {
                printJSON(["dir": folder, "created": created, "kept": names.filter { !created.contains($0) }])
            } else {
                print(created.isEmpty ? "all keys already exist in \(folder)" : "created \(created.joined(separator: ", ")) in \(folder)")
            }
        }
    }

    struct PayloadKey: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "payload",
            abstract: "Create the payload signing key file if missing; print its key id and public key.",
            discussion: """
                The payment-router signs every payment payload with this Ed25519 key (WIPAY_PAYLOAD_KEY_FILE); \
                phones verify payloads with the public key. A new file is created with mode 600 and never \
                overwritten; an existing one is only read. The private key is never printed.
                """)
        @Flag(help: "Print one JSON object on stdout.") var json = false
        @Argument(help: "The key file, e.g. var/secrets/payload-key.") var file: String

        func run() async throws {
            guard !file.isEmpty else { throw ValidationError("FILE is a path") }
            let existed = FileManager.default.fileExists(atPath: file)
            let signer: PayloadSigner
            do {
                signer = PayloadSigner(privateKey: try PayloadKeyFile.generate(path: file))
            } catch {
                throw Failure("\(error)")
            }
            let publicKey = Base64URL.encode(signer.publicKeyBytes)
            if json {
                printJSON(["file": file, "key_id": signer.keyId, "public_key": publicKey, "created": !existed])
            } else {
                print("\(existed ? "key file" : "created") \(file)")
                print("key id      \(signer.keyId)")
                print("public key  \(publicKey)")
            }
        }
    }
}
