import Logging
import MeshKernel
import ServiceLifecycle
import Synchronization
import Tracing

/// HTTP telemetry as a swift-service-lifecycle `Service`: reads the
/// capture's exchanges until cancelled or gracefully shut down, and hands
/// each to the metrics, the tracer and the flow log it was given.
///
/// It accepts a `Logger` and never bootstraps logging, metrics or tracing:
/// the application does, and passes what it wants used.
public struct HTTPTelemetryService<T: Tracer>: Service {
    private let capture: HTTPCapture
    /// Also kept on its own for the gauges it refreshes.
    private let metrics: HTTPMetrics?
    /// The metrics, tracing and flow log given, each handed every exchange.
    private let recorders: [any HTTPExchangeRecorder]
    private let logger: Logger
    private let pollInterval: Duration
    private let onExchange: (@Sendable (HTTPExchange) -> Void)?

    /// Creates the service.
    ///
    /// - Parameters:
    ///   - capture: the kernel capture (its workloads can change while the service runs).
    ///   - metrics: where exchanges are counted and timed, or nil.
    ///   - tracing: where exchanges become spans, or nil.
    ///   - flowLog: where exchanges are logged, or nil.
    ///   - logger: for the service's own messages.
    ///   - pollInterval: the longest an exchange waits in the kernel's ring when traffic is light.
    ///   - onExchange: also called with each exchange (for an application's own use).
    public init(capture: HTTPCapture, metrics: HTTPMetrics? = nil, tracing: HTTPTracing<T>?, flowLog: FlowLog? = nil,
                logger: Logger, pollInterval: Duration = .milliseconds(10), onExchange: (@Sendable (HTTPExchange) -> Void)? = nil) {
        self.capture = capture
        self.metrics = metrics
        recorders = ([metrics, tracing, flowLog] as [(any HTTPExchangeRecorder)?]).compactMap { $0 }
        self.logger = logger
        self.pollInterval = pollInterval
        self.onExchange = onExchange
    }

    /// Reads exchanges until the task is cancelled or the service shuts down
    /// gracefully; throws if reading from the kernel fails.
    public func run() async throws {
        let exchanges = try capture.exchanges(pollInterval: pollInterval)
        logger.info("HTTP telemetry started")
        let inFlight = InFlightRequests()
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                // The gauges are refreshed every second, with traffic or without.
                if let metrics {
                    group.addTask { [capture] in
                        while !Task.isCancelled {
                            metrics.setInFlight(inFlight.count.load(ordering: .relaxed))
                            if let counters = try? capture.counters() {
                                metrics.recordEventsLost(total: counters.eventsLost + exchanges.events.statistics.dropped)
                            }
                            try? await Task.sleep(for: .seconds(1))
                        }
                    }
                }
                var iterator = exchanges.makeAsyncIterator()
                while let exchange = await iterator.next() {
                    for recorder in recorders { recorder.record(exchange) }
                    onExchange?(exchange)
                    inFlight.count.store(iterator.assembler.statistics.inFlight, ordering: .relaxed)
                }
                group.cancelAll()
            }
        } onGracefulShutdown: {
            exchanges.finish()
        }
        if let failure = exchanges.events.failure {
            logger.error("HTTP telemetry stopped: \(failure)")
            throw failure
        }
        logger.info("HTTP telemetry stopped")
    }
}

extension HTTPTelemetryService where T == NoOpTracer {
    /// Creates the service without tracing.
    public init(capture: HTTPCapture, metrics: HTTPMetrics? = nil, flowLog: FlowLog? = nil, logger: Logger,
                pollInterval: Duration = .milliseconds(10), onExchange: (@Sendable (HTTPExchange) -> Void)? = nil) {
        self.init(capture: capture, metrics: metrics, tracing: nil, flowLog: flowLog, logger: logger,
                  pollInterval: pollInterval, onExchange: onExchange)
    }
}

/// The in-flight count, shared between the reading loop and the gauge refresher.
private final class InFlightRequests: Sendable {
    let count = Atomic<Int>(0)
}
