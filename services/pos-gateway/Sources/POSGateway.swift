import Hummingbird
import Logging
import WiPayBus
import WiPayRuntime

/// The pos-gateway: the HTTP edge. Foundation only so far: `GET /healthz` (200 when the bus answers),
/// `GET /metrics`, heartbeats and the control socket. The API lands with the payment-flow issue.
public enum POSGatewayStage {
    public static let defaultPort = 8080

    public static func run(config: RuntimeConfig) async throws {
        let runtime = try Runtime(config: config)
        let client = try runtime.client()
        try await runtime.run(healthCheck: {
            do {
                _ = try await client.send(
                    service: "bus", type: .ping, body: Empty().encoded(), attemptTimeout: .milliseconds(500),
                    totalTimeout: .milliseconds(900))
                return (true, "")
            } catch {
                return (false, "bus unreachable: \(error)")
            }
        })
    }
}
