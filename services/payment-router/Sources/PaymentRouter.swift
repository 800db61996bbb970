import Logging
import WiPayBus
import WiPayRuntime

/// The payment-router stage. Foundation only so far: it joins the bus as a worker, heartbeats, answers `ping`
/// and `payctl status`/`drain`. Its payment logic lands with the payment-flow issue.
public enum PaymentRouterStage {
    public static func run(config: RuntimeConfig) async throws {
        let runtime = try Runtime(config: config)
        try await runtime.run(handler: { message in
            switch message.envelope.type {
            case .ping: .ok(runtime.status())
            default: .error(.unknownType, "unknown_type", "payment-router does not handle \(message.envelope.type) yet")
            }
        })
    }
}
