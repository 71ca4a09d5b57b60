import CoreMetrics
import Prometheus

/// A swift-metrics factory that records into a Prometheus registry and
/// gives every metric family a `# HELP` line, so the exposition passes
/// `promtool check metrics`.
///
/// swift-prometheus' own factory registers metrics without help text, which
/// promtool rejects. Bootstrap this one instead (or pass it to the
/// telemetry types explicitly):
///
/// ```swift
/// let registry = PrometheusCollectorRegistry()
/// MetricsSystem.bootstrap(MeshPrometheusFactory(registry: registry, help: HTTPMetrics.help))
/// // serve registry.emitToString() at /metrics
/// ```
public struct MeshPrometheusFactory: MetricsFactory {
    /// Where the metrics are kept.
    public let registry: PrometheusCollectorRegistry
    /// Help text by metric name; other metrics get ``defaultHelp``.
    public var help: [String: String]
    /// Help text of metrics not in ``help``.
    public var defaultHelp: String
    /// Buckets of duration histograms (swift-metrics timers).
    public var durationBuckets: [Duration]
    /// Buckets of value histograms (aggregating recorders).
    public var valueBuckets: [Double]

    /// A factory recording into `registry`.
    public init(registry: PrometheusCollectorRegistry, help: [String: String] = [:], defaultHelp: String = "Recorded through swift-metrics.",
                durationBuckets: [Duration] = MeshPrometheusFactory.latencyBuckets,
                valueBuckets: [Double] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000]) {
        self.registry = registry
        self.help = help
        self.defaultHelp = defaultHelp
        self.durationBuckets = durationBuckets
        self.valueBuckets = valueBuckets
    }

    /// Latency buckets from 50 µs to 10 s: a mesh's requests are mostly far below the usual 5 ms first bucket.
    public static let latencyBuckets: [Duration] = [
        .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2.5),
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
        .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(10),
    ]

    /// The whole label as the name (an empty unit adds nothing), with its help text.
    private func descriptor(_ label: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: label, unitName: "", helpText: help[label] ?? defaultHelp)
    }

    public func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        registry.makeCounter(descriptor: descriptor(label), labels: dimensions)
    }

    public func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        registry.makeCounter(descriptor: descriptor(label), labels: dimensions)
    }

    public func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        guard aggregate else { return registry.makeGauge(descriptor: descriptor(label), labels: dimensions) }
        return registry.makeValueHistogram(descriptor: descriptor(label), labels: dimensions, buckets: valueBuckets)
    }

    public func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        registry.makeGauge(descriptor: descriptor(label), labels: dimensions)
    }

    public func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        registry.makeDurationHistogram(descriptor: descriptor(label), labels: dimensions, buckets: durationBuckets)
    }

    public func destroyCounter(_ handler: any CounterHandler) {
        if let counter = handler as? Prometheus.Counter { registry.unregisterCounter(counter) }
    }

    public func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {
        if let counter = handler as? Prometheus.Counter { registry.unregisterCounter(counter) }
    }

    public func destroyRecorder(_ handler: any RecorderHandler) {
        if let gauge = handler as? Prometheus.Gauge { registry.unregisterGauge(gauge) }
        if let histogram = handler as? ValueHistogram { registry.unregisterValueHistogram(histogram) }
    }

    public func destroyMeter(_ handler: any MeterHandler) {
        if let gauge = handler as? Prometheus.Gauge { registry.unregisterGauge(gauge) }
    }

    public func destroyTimer(_ handler: any TimerHandler) {
        if let histogram = handler as? DurationHistogram { registry.unregisterDurationHistogram(histogram) }
    }
}
