import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus

/// Serves a Prometheus registry's exposition at `GET /metrics` (anything else
/// is 404), for a scraper or `curl`.
enum MetricsEndpoint {
    /// Binds `host`:`port` on `group`; the returned channel serves until closed.
    static func serve(_ registry: PrometheusCollectorRegistry, host: String, port: Int,
                      group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> any Channel {
        try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(Handler(registry: registry))
                }
            }
            .bind(host: host, port: port)
            .get()
    }

    private final class Handler: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        private let registry: PrometheusCollectorRegistry
        private var head: HTTPRequestHead?

        init(registry: PrometheusCollectorRegistry) { self.registry = registry }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let request): head = request
            case .body: break
            case .end:
                guard let request = head else { return }
                let found = request.method == .GET && request.uri.split(separator: "?").first == "/metrics"
                var body = context.channel.allocator.buffer(capacity: 4_096)
                if found {
                    var bytes: [UInt8] = []
                    registry.emit(into: &bytes)
                    body.writeBytes(bytes)
                } else {
                    body.writeString("not found: GET /metrics\n")
                }
                var headers = HTTPHeaders([("content-length", "\(body.readableBytes)")])
                headers.add(name: "content-type", value: found ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain; charset=utf-8")
                context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: found ? .ok : .notFound, headers: headers))),
                              promise: nil)
                context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
                head = nil
            }
        }
    }
}
