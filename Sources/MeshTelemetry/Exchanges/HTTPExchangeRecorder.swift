/// Anything that takes observed HTTP exchanges — ``HTTPMetrics``,
/// ``HTTPTracing``, ``FlowLog``, or an application's own — so a source of
/// exchanges (the kernel's assembler, MeshProxy) can feed any of them.
public protocol HTTPExchangeRecorder: Sendable {
    /// Takes one exchange.
    func record(_ exchange: HTTPExchange)
}

extension HTTPMetrics: HTTPExchangeRecorder {}
extension HTTPTracing: HTTPExchangeRecorder {}
extension FlowLog: HTTPExchangeRecorder {}
