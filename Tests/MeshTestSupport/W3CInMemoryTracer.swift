import InMemoryTracing
import Tracing

/// The in-memory tracer, with W3C `traceparent` extraction as a production
/// tracer's propagator has it (the in-memory one reads its own keys only).
public struct W3CInMemoryTracer: Tracer {
    /// The spans, as the in-memory tracer keeps them.
    public let recorder = InMemoryTracer()

    /// A tracer with no spans yet.
    public init() {}

    public func startSpan<Instant: TracerInstant>(_ operationName: String, context: @autoclosure () -> InstrumentationContext, ofKind kind: SpanKind,
                                           at instant: @autoclosure () -> Instant, function: String, file fileID: String, line: UInt) -> InMemorySpan {
        recorder.startSpan(operationName, context: context(), ofKind: kind, at: instant(), function: function, file: fileID, line: line)
    }

    public func activeSpan(identifiedBy context: InstrumentationContext) -> InMemorySpan? { recorder.activeSpan(identifiedBy: context) }

    public func forceFlush() { recorder.forceFlush() }

    public func inject<Carrier, Inject: Injector>(_ context: InstrumentationContext, into carrier: inout Carrier, using injector: Inject)
    where Inject.Carrier == Carrier {
        recorder.inject(context, into: &carrier, using: injector)
    }

    public func extract<Carrier, Extract: Extractor>(_ carrier: Carrier, into context: inout InstrumentationContext, using extractor: Extract)
    where Extract.Carrier == Carrier {
        let parts = extractor.extract(key: "traceparent", from: carrier)?.split(separator: "-") ?? []
        guard parts.count == 4, parts[1].count == 32, parts[2].count == 16 else { return }
        context.inMemorySpanContext = InMemorySpanContext(traceID: String(parts[1]), spanID: String(parts[2]), parentSpanID: nil)
    }
}
