// swift-tools-version:6.0
// WiPay — pay at the counter with a phone. Five services over ZeroMQ, a ledger in PostgreSQL.
import PackageDescription

/// One set of settings for every target: Swift 6 language mode (complete concurrency checking).
let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

let log = Target.Dependency.product(name: "Logging", package: "swift-log")
let metrics = Target.Dependency.product(name: "Metrics", package: "swift-metrics")
let prometheus = Target.Dependency.product(name: "Prometheus", package: "swift-prometheus")
let lifecycle = Target.Dependency.product(name: "ServiceLifecycle", package: "swift-service-lifecycle")
let argumentParser = Target.Dependency.product(name: "ArgumentParser", package: "swift-argument-parser")
let crypto = Target.Dependency.product(name: "Crypto", package: "swift-crypto")
let hummingbird = Target.Dependency.product(name: "Hummingbird", package: "hummingbird")
let hdr = Target.Dependency.product(name: "Histogram", package: "hdrhistogram-swift")

/// A service is a library (its wiring and logic, used by main and by the tests) plus a thin executable.
func service(_ name: String, folder: String, library: String, deps: [Target.Dependency]) -> [Target] {
    [
        .target(name: library, dependencies: deps, path: "services/\(folder)/Sources", swiftSettings: swiftSettings),
        .executableTarget(
            name: name, dependencies: [.target(name: library), "WiPayRuntime", argumentParser],
            path: "services/\(folder)/main", swiftSettings: swiftSettings),
    ]
}

let serviceDeps: [Target.Dependency] = ["WiPayRuntime", "WiPayBus", "ZeroMQ", log, metrics, lifecycle]

let package = Package(
    name: "wipay",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "bus", targets: ["bus"]),
        .executable(name: "ledger", targets: ["ledger"]),
        .executable(name: "payment-router", targets: ["payment-router"]),
        .executable(name: "notifier", targets: ["notifier"]),
        .executable(name: "pos-gateway", targets: ["pos-gateway"]),
        .executable(name: "phone-gateway", targets: ["phone-gateway"]),
        .executable(name: "payctl", targets: ["payctl"]),
        .executable(name: "paybench", targets: ["paybench"]),
        .executable(name: "pos-terminal", targets: ["pos-terminal"]),
        .executable(name: "phone-wallet", targets: ["phone-wallet"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.5.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.27.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
        // Tests only: the end-to-end suite reads docs/openapi.yaml to check the responses it saw.
        .package(url: "https://github.com/jpsim/Yams", exact: "5.0.1"),
    ],
    targets: [
        // C libraries from Debian: libzmq3-dev and libpq-dev.
        .systemLibrary(
            name: "CZeroMQ", path: "shared/CZeroMQ", providers: [.apt(["libzmq3-dev"])]),
        .systemLibrary(
            name: "CLibPQ", path: "shared/CLibPQ", pkgConfig: "libpq", providers: [.apt(["libpq-dev"])]),

        // Our thin Swift layers over them.
        .target(name: "ZeroMQ", dependencies: ["CZeroMQ"], path: "shared/ZeroMQ", swiftSettings: swiftSettings),
        .target(name: "Postgres", dependencies: ["CLibPQ", metrics], path: "shared/Postgres", swiftSettings: swiftSettings),

        // The bus protocol (codec, messages) and the bus endpoints (client, worker, publisher, subscriber).
        .target(name: "WiPayBus", dependencies: ["ZeroMQ", log], path: "shared/WiPayBus", swiftSettings: swiftSettings),

        // What every service shares: configuration, logging, metrics, control socket, heartbeats, lifecycle.
        .target(
            name: "WiPayRuntime",
            dependencies: [
                "WiPayBus", "ZeroMQ", log, metrics, prometheus, lifecycle, hummingbird, argumentParser,
                .product(name: "HummingbirdTLS", package: "hummingbird"), .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            path: "shared/WiPayRuntime", swiftSettings: swiftSettings),

        // The signed payment payload (EMVCo layout): the router signs it, phones verify it.
        .target(name: "WiPayPayload", dependencies: [crypto], path: "shared/WiPayPayload", swiftSettings: swiftSettings),

        // What both HTTP gateways share: strict JSON, errors, idempotency keys, SSE streams fed by the notifier.
        .target(
            name: "WiPayGateway",
            dependencies: ["WiPayBus", "WiPayRuntime", "WiPayPayload", "WiPayPages", hummingbird, crypto, log, metrics, lifecycle],
            path: "shared/WiPayGateway", swiftSettings: swiftSettings),

        // The browser pages (docs/pages.md): the counter, the wallet and the operations console, compiled in
        // (nothing to find on disk at run time) and served with one strict set of security headers.
        .target(
            name: "WiPayPages", dependencies: [hummingbird], path: "shared/WiPayPages",
            resources: [
                .embedInCode("Pages/common.css"), .embedInCode("Pages/common.js"),
                .embedInCode("Pages/pos.html"), .embedInCode("Pages/pos.js"),
                .embedInCode("Pages/wallet.html"), .embedInCode("Pages/wallet.js"),
                .embedInCode("Pages/console.html"), .embedInCode("Pages/console.js"),
            ],
            swiftSettings: swiftSettings),

        // What the reference clients (and the end-to-end tests and paybench) share: HTTP and SSE client,
        // device signatures, the local link, QR codes in a terminal.
        .target(
            name: "WiPayClient", dependencies: ["WiPayPayload", crypto], path: "shared/WiPayClient",
            swiftSettings: swiftSettings),
    ]
        + service("bus", folder: "bus", library: "BusBroker", deps: serviceDeps)
        + service("ledger", folder: "ledger", library: "LedgerService", deps: serviceDeps + ["Postgres", crypto])
        + service(
            "payment-router", folder: "payment-router", library: "PaymentRouterService",
            deps: serviceDeps + ["Postgres", "WiPayPayload", crypto])
        + service("notifier", folder: "notifier", library: "NotifierService", deps: serviceDeps + ["Postgres"])
        + service("pos-gateway", folder: "pos-gateway", library: "POSGatewayService", deps: serviceDeps + [hummingbird, "WiPayGateway", "WiPayPayload", "WiPayPages"])
        + service("phone-gateway", folder: "phone-gateway", library: "PhoneGatewayService", deps: serviceDeps + [hummingbird, "WiPayGateway", "WiPayPayload", crypto])
        + [
            .executableTarget(
                name: "payctl", dependencies: ["WiPayBus", "WiPayRuntime", "WiPayPayload", "WiPayPages", "ZeroMQ", argumentParser, log, hummingbird],
                path: "ops/payctl", swiftSettings: swiftSettings),
            .executableTarget(
                name: "paybench", dependencies: ["WiPayBus", "WiPayRuntime", "WiPayClient", "WiPayPayload", "ZeroMQ", argumentParser, hdr, log, crypto],
                path: "ops/paybench", swiftSettings: swiftSettings),
            .executableTarget(
                name: "pos-terminal", dependencies: ["WiPayClient", "WiPayPayload", argumentParser],
                path: "ops/clients/pos-terminal", swiftSettings: swiftSettings),
            .executableTarget(
                name: "phone-wallet", dependencies: ["WiPayClient", "WiPayPayload", argumentParser, crypto],
                path: "ops/clients/phone-wallet", swiftSettings: swiftSettings),
            .testTarget(name: "ZeroMQTests", dependencies: ["ZeroMQ"], path: "Tests/ZeroMQTests", swiftSettings: swiftSettings),
            .testTarget(name: "WiPayBusTests", dependencies: ["WiPayBus", "ZeroMQ"], path: "Tests/WiPayBusTests", swiftSettings: swiftSettings),
            .testTarget(
                name: "IntegrationTests",
                dependencies: ["WiPayBus", "WiPayRuntime", "ZeroMQ", "Postgres", "LedgerService", "BusBroker", "NotifierService", "PaymentRouterService"],
                path: "Tests/IntegrationTests", swiftSettings: swiftSettings),
            // Pure logic of the payment flow, no sockets: state machine, payload, JSON, QR, signatures.
            .testTarget(
                name: "PaymentFlowTests",
                dependencies: ["WiPayPayload", "WiPayGateway", "WiPayClient", "PaymentRouterService", "WiPayBus", crypto, hummingbird],
                path: "Tests/PaymentFlowTests", swiftSettings: swiftSettings),
            // All five services as processes on a real PostgreSQL, driven through HTTP, SSE, payctl and the
            // reference clients.
            .testTarget(
                name: "EndToEndTests",
                dependencies: [
                    "WiPayClient", "WiPayPayload", "WiPayBus", "Postgres", crypto,
                    .product(name: "Yams", package: "Yams"),
                ],
                path: "Tests/EndToEndTests", swiftSettings: swiftSettings),
        ]
)
