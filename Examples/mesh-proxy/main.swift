// mesh-proxy: the per-node proxy, with listeners of its own for each tenant.
//
//   mesh-proxy [--capacity N] [--metrics HOST:PORT] [--threads N] [--splice-spin MICROSECONDS] [--http-splice-spin MICROSECONDS] [--tenants FILE] [--datapath-pins FOLDER] --tenant NAME=LISTEN[,listen=HOST:PORT...][,upstream=HOST:PORT][,mode=http][,max-connections=N][,requests-per-second=N][,bytes-per-second=N][,max-buffered-bytes=N]
//              [,idle-seconds=S][,weight=W][,datapath-tenant=N]
//              [,cert=CHAIN.pem,key=KEY.pem] ...
//
//   mesh-proxy --capacity 1000 --tenant shop=127.0.0.1:15001,weight=3 --tenant blog=127.0.0.1:15002,max-connections=100
//
// With --tenants, FILE holds more tenants, one a line in --tenant's form
// (blank lines and lines starting with # are skipped); on SIGHUP it is read
// again and the tenants (--tenant's and the file's) are applied live: added,
// changed and removed tenants change, the others' connections go on. A file
// that cannot be read or a configuration that is not valid is logged, and the
// running configuration stays. (Write the file whole, then rename it into
// place: a file read half-written applies what it holds so far.)
// Each listen= adds a listener of the tenant's, served as its first is.
// With mode=http, the tenant serves HTTP/1.1 and sends every request to its
// upstream over pooled keep-alive connections (without upstream, to the
// connection's original destination, as an L4 tenant without one does).
// With cert and key, the tenant's listener terminates TLS with that
// certificate; SIGHUP reads every tenant's certificate files again (new
// connections get the new ones).
// With --capacity, at most N exchanges (L4 connections, HTTP requests) run at
// once, shared among the tenants by weight (see ProxyCapacity).
// With --metrics, GET /metrics on HOST:PORT answers the Prometheus exposition:
// the proxy's global and per-tenant metrics (mesh_proxy_*) and its HTTP
// exchanges in MeshTelemetry's names (mesh_http_*, hubble_http_*,
// http_server_request_duration_seconds, reporter "proxy").
// Each tenant runs on a thread of its own, which the kernel schedules by the
// tenant's weight; with --threads, the tenants share N event loops instead (and,
// for their plaintext connections, HTTP and L4, a splice loop beside each).
// --splice-spin and --http-splice-spin set how long an L4 or HTTP tenant's splice loop may poll before it sleeps
// (0: never; see ProxyConfiguration.spliceSpin and httpSpliceSpin).
//
// Without `upstream`, connections go to their original destination, which the
// datapath's ProxyRedirect answers through getsockopt(SO_ORIGINAL_DST): run
// the proxy in a cgroup registered with `ProxyRedirect.register(proxy:)`.
// With --datapath-pins, the proxy reads the datapath's records instead, from
// the bpffs folder where the agent pinned them (ProxyRedirect.pinRecords(in:replacing:),
// e.g. /sys/fs/bpf/mesh): each connection's original destination and the
// identity of the workload that made it (HTTP exchanges are reported by it),
// and with datapath-tenant=N a tenant refuses connections the datapath
// recorded as another tenant's workload's (TenantConfiguration.datapathTenant).
// SIGTERM or SIGINT stop accepting and drain open connections.
import Foundation
import Logging
import MeshKernel
import MeshProxy
import MeshTelemetry
import MeshTelemetryPrometheus
import NIOCore
import NIOPosix
import Prometheus
import ServiceLifecycle

func tenant(_ argument: String) throws -> TenantConfiguration {
    let parts = argument.split(separator: ",").map(String.init)
    guard let first = parts.first, let equals = first.firstIndex(of: "="),
          let listener = endpoint(String(first[first.index(after: equals)...])) else {
        throw ProxyConfigurationError(tenant: nil, field: "--tenant", reason: "'\(argument)' is not NAME=HOST:PORT[,key=value...]")
    }
    var configuration = TenantConfiguration(name: String(first[..<equals]), listener: listener)
    for option in parts.dropFirst() {
        let pair = option.split(separator: "=", maxSplits: 1).map(String.init)
        switch (pair.first, pair.count == 2 ? pair[1] : nil) {
        case ("upstream", let value?) where endpoint(value) != nil: configuration.upstream = .fixed(endpoint(value)!)
        case ("listen", let value?) where endpoint(value) != nil: configuration.additionalListeners.append(endpoint(value)!)
        case ("max-connections", let value?) where Int(value) != nil: configuration.limits.maxConnections = Int(value)
        case ("requests-per-second", let value?) where Int(value) != nil: configuration.limits.requestsPerSecond = Int(value)
        case ("bytes-per-second", let value?) where Int(value) != nil: configuration.limits.bytesPerSecond = Int(value)
        case ("max-buffered-bytes", let value?) where Int(value) != nil: configuration.limits.maxTotalBufferedBytes = Int(value)
        case ("idle-seconds", let value?) where Int(value) != nil: configuration.idleTimeout = .seconds(Int(value)!)
        case ("weight", let value?) where Int(value) != nil: configuration.weight = Int(value)!
        case ("datapath-tenant", let value?) where UInt32(value) != nil: configuration.datapathTenant = UInt32(value)
        case ("mode", "http"?): configuration.mode = .http(HTTPRouting(routes: [HTTPRoute(cluster: "upstream")], clusters: [:]))
        case ("cert", let value?):
            configuration.tls = TLSTermination(defaultCertificate: CertificateFiles(chainPath: value, privateKeyPath: configuration.tls?.defaultCertificate?.privateKeyPath ?? ""))
        case ("key", let value?):
            configuration.tls = TLSTermination(defaultCertificate: CertificateFiles(chainPath: configuration.tls?.defaultCertificate?.chainPath ?? "", privateKeyPath: value))
        default: throw ProxyConfigurationError(tenant: configuration.name, field: option, reason: "is not a known option with a valid value")
        }
    }
    // HTTP mode's one cluster is the upstream, or without one, each connection's original destination.
    if case .http(var routing) = configuration.mode {
        routing.clusters = switch configuration.upstream {
        case .fixed(let upstream): ["upstream": HTTPCluster(endpoints: [upstream])]
        case .originalDestination: ["upstream": .originalDestination()]
        }
        configuration.mode = .http(routing)
    }
    return configuration
}

/// The tenants of a `--tenants` file: one a line in `--tenant`'s form; blank lines and lines starting with # skipped.
func tenants(inFile path: String) throws -> [TenantConfiguration] {
    let text: String
    do {
        text = try String(contentsOfFile: path, encoding: .utf8)
    } catch {
        throw ProxyConfigurationError(tenant: nil, field: "--tenants", reason: "cannot read \(path): \(error.localizedDescription)")
    }
    return try text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated().compactMap { index, line in
        let spec = line.trimmingCharacters(in: .whitespaces)
        guard !spec.isEmpty, !spec.hasPrefix("#") else { return nil }
        do {
            return try tenant(spec)
        } catch let error as ProxyConfigurationError {
            throw ProxyConfigurationError(tenant: error.tenant, field: "\(path):\(index + 1): \(error.field)", reason: error.reason)
        }
    }
}

func endpoint(_ text: String) -> Endpoint? {
    guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]),
          let address = try? IPAddress(String(text[..<colon]).trimmingCharacters(in: ["[", "]"])) else { return nil }
    return Endpoint(address, port: port)
}

// A parent (a test runner, say) may have blocked the signals ServiceGroup listens for.
var signals = sigset_t()
sigemptyset(&signals)
pthread_sigmask(SIG_SETMASK, &signals, nil)

var logger = Logger(label: "mesh-proxy")
logger.logLevel = .info
do {
    var configuration = ProxyConfiguration(tenants: [])
    var metricsAt: Endpoint?
    var threads: Int?
    var tenantsFile: String?
    var originalDestinations = OriginalDestinationSource.socketOption
    var arguments = CommandLine.arguments.dropFirst()
    while let flag = arguments.popFirst() {
        switch (flag, arguments.popFirst()) {
        case ("--tenant", let value?): configuration.tenants.append(try tenant(value))
        case ("--capacity", let value?) where Int(value) != nil: configuration.capacity = ProxyCapacity(maxConcurrentExchanges: Int(value)!)
        case ("--metrics", let value?) where endpoint(value) != nil: metricsAt = endpoint(value)
        case ("--threads", let value?) where (Int(value) ?? 0) > 0: threads = Int(value)!
        case ("--splice-spin", let value?) where Int(value) != nil: configuration.spliceSpin = .microseconds(Int(value)!)
        case ("--http-splice-spin", let value?) where Int(value) != nil: configuration.httpSpliceSpin = .microseconds(Int(value)!)
        case ("--tenants", let value?): tenantsFile = value
        case ("--datapath-pins", let value?):
            // (Opened, not created: a folder the agent has not made yet is an error, not an empty folder of ours.)
            originalDestinations = .pinnedRecords(try RedirectRecords(pinnedIn: PinFolder(existingAt: value)))
        default:
            throw ProxyConfigurationError(tenant: nil, field: flag, reason: "is not --tenant NAME=HOST:PORT[,...], --tenants FILE, --datapath-pins FOLDER, --capacity N, "
                                            + "--metrics HOST:PORT, --threads N, --splice-spin MICROSECONDS or --http-splice-spin MICROSECONDS")
        }
    }
    // The configuration without the file's tenants, which SIGHUP reads again.
    let fixed = configuration
    if let tenantsFile { configuration.tenants += try tenants(inFile: tenantsFile) }
    // Metrics, when asked for: the application (this program) makes the registry and serves it.
    let registry = PrometheusCollectorRegistry()
    let factory = metricsAt.map { _ in MeshPrometheusFactory(registry: registry, help: HTTPMetrics.help) }
    let exchanges: [any HTTPExchangeRecorder] = factory.map { [HTTPMetrics(factory: $0)] } ?? []
    let group = threads.map { MultiThreadedEventLoopGroup(numberOfThreads: $0) }
    let proxy = try MeshProxy(configuration: configuration, originalDestinations: originalDestinations, group: group, logger: logger,
                              metrics: factory, exchanges: exchanges)
    var metricsChannel: (any Channel)?
    if let metricsAt {
        metricsChannel = try await MetricsEndpoint.serve(registry, host: metricsAt.address.description, port: Int(metricsAt.port),
                                                     group: group ?? MultiThreadedEventLoopGroup.singleton)
        logger.info("metrics at http://\(metricsAt)/metrics")
    }
    // SIGHUP: the tenants file (if any) is read again and applied, then certificates are read again; what
    // cannot be used is logged and the running configuration stays. (Applied one after another, in order.)
    signal(SIGHUP, SIG_IGN)
    let hangUp = DispatchSource.makeSignalSource(signal: SIGHUP)
    let reloads = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))   // (signals meanwhile: one more reload)
    hangUp.setEventHandler { reloads.continuation.yield() }
    let reloading = Task { [logger] in
        for await _ in reloads.stream {
            if let tenantsFile {
                do {
                    var next = fixed
                    next.tenants += try tenants(inFile: tenantsFile)
                    try await proxy.apply(next)
                    logger.info("tenants applied", metadata: ["tenants": "\(next.tenants.map(\.name))"])
                } catch {
                    logger.error("tenants not applied, the running ones stay: \(error)")
                }
            }
            do { try proxy.reloadCertificates() } catch { logger.error("certificates not reloaded: \(error)") }
        }
    }
    hangUp.resume()
    let services = ServiceGroup(configuration: .init(services: [proxy], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
    try await services.run()
    reloads.continuation.finish()
    await reloading.value
    try? await metricsChannel?.close().get()
    try await group?.shutdownGracefully()
} catch {
    logger.error("\(error)")
    exit(1)
}
