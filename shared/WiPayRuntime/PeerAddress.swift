import Hummingbird
import NIOCore

/// The TCP peer of the HTTP request being handled, for limits per client address. Set by the HTTP
/// server of every service (`PeerAddressResponder`) for the handling of each request; nil outside one.
/// It is the socket's peer: behind a proxy every client has the proxy's address.
public enum PeerAddress {
    @TaskLocal public static var current: String?

    /// The IP address (or unix socket path) of a socket address; nil when it has none.
    static func text(_ address: SocketAddress?) -> String? {
        guard let address else { return nil }
        switch address {
        case .v4, .v6: return address.ipAddress
        case .unixDomainSocket: return address.pathname
        }
    }
}

/// The request context the HTTP server makes: it keeps the channel so that the router's own
/// `BasicRequestContext` is made from the same source, and the peer address.
struct PeerRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let channel: any Channel
    let peer: String?

    init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.channel = source.channel
        self.peer = PeerAddress.text(source.channel.remoteAddress)
    }
}

/// Runs the router with `PeerAddress.current` set to the request's TCP peer.
struct PeerAddressResponder<Inner: HTTPResponder>: HTTPResponder where Inner.Context == BasicRequestContext {
    typealias Context = PeerRequestContext
    let inner: Inner

    @Sendable func respond(to request: Request, context: PeerRequestContext) async throws -> Response {
        let source = ApplicationRequestContextSource(channel: context.channel, logger: context.logger)
        return try await PeerAddress.$current.withValue(context.peer) {
            try await inner.respond(to: request, context: BasicRequestContext(source: source))
        }
    }
}
