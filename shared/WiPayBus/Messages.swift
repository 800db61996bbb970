// Message bodies, one struct per message type (docs/bus-protocol.md lists them with their fields).
// Field order on the wire is the order of the `encode` calls; adding a field means a new version tag.

/// The body of every reply whose status is not 2xx.
public struct ErrorBody: BusEncodable, Equatable, Error {
    public var code: String
    public var message: String

    public init(code: String, message: String) {
        self.code = code
        self.message = message
    }

    public func encode(to w: inout BusWriter) {
        w.write(code)
        w.write(message)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        code = try r.readString("code", max: 64)
        message = try r.readString("message", max: 1024)
    }
}

/// An empty body (ping, status and drain requests).
public struct Empty: BusEncodable, Equatable {
    public init() {}
    public func encode(to w: inout BusWriter) {}
    public init(from r: inout BusReader) throws(BusDecodeError) {}
}

/// What an instance says about itself: in its heartbeat (`hb.<service>`, every interval) and in the
/// reply to `control.status`.
public struct InstanceStatus: BusEncodable, Equatable {
    public var service: String
    public var instance: String
    public var version: String
    public var host: String
    public var pid: Int64
    public var startedAtMillis: Int64
    public var healthy: Bool
    public var draining: Bool
    /// Requests being worked on right now.
    public var inFlight: Int64
    /// Requests finished since start.
    public var handledTotal: Int64
    /// Requests finished per second over the last heartbeat interval.
    public var recentPerSecond: Int64
    /// Where `payctl` reaches this instance's control socket.
    public var controlEndpoint: String
    /// Where its HTTP endpoint (/metrics, /healthz) listens, or "".
    public var httpEndpoint: String
    /// A short human line: why unhealthy, what it is draining, ...
    public var detail: String

    public init(
        service: String, instance: String, version: String, host: String, pid: Int64, startedAtMillis: Int64,
        healthy: Bool, draining: Bool, inFlight: Int64, handledTotal: Int64, recentPerSecond: Int64,
        controlEndpoint: String, httpEndpoint: String, detail: String
    ) {
        self.service = service
        self.instance = instance
        self.version = version
        self.host = host
        self.pid = pid
        self.startedAtMillis = startedAtMillis
        self.healthy = healthy
        self.draining = draining
        self.inFlight = inFlight
        self.handledTotal = handledTotal
        self.recentPerSecond = recentPerSecond
        self.controlEndpoint = controlEndpoint
        self.httpEndpoint = httpEndpoint
        self.detail = detail
    }

    public func encode(to w: inout BusWriter) {
        w.write(service)
        w.write(instance)
        w.write(version)
        w.write(host)
        w.write(pid)
        w.write(startedAtMillis)
        w.write(healthy)
        w.write(draining)
        w.write(inFlight)
        w.write(handledTotal)
        w.write(recentPerSecond)
        w.write(controlEndpoint)
        w.write(httpEndpoint)
        w.write(detail)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        service = try r.readString("service", max: 64)
        instance = try r.readString("instance", max: 128)
        version = try r.readString("version", max: 64)
        host = try r.readString("host", max: 256)
        pid = try r.readInt64("pid")
        startedAtMillis = try r.readInt64("started_at")
        healthy = try r.readBool("healthy")
        draining = try r.readBool("draining")
        inFlight = try r.readInt64("in_flight")
        handledTotal = try r.readInt64("handled_total")
        recentPerSecond = try r.readInt64("recent_per_second")
        controlEndpoint = try r.readString("control_endpoint", max: 256)
        httpEndpoint = try r.readString("http_endpoint", max: 256)
        detail = try r.readString("detail", max: 1024)
    }
}

/// Reply to `control.drain`: the instance stopped taking new work and will exit when `inFlight` is done.
public struct DrainReply: BusEncodable, Equatable {
    public var accepted: Bool
    public var inFlight: Int64

    public init(accepted: Bool, inFlight: Int64) {
        self.accepted = accepted
        self.inFlight = inFlight
    }

    public func encode(to w: inout BusWriter) {
        w.write(accepted)
        w.write(inFlight)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        accepted = try r.readBool("accepted")
        inFlight = try r.readInt64("in_flight")
    }
}
