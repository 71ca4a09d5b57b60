import NIOCore
import NIOPosix
import Testing
@testable import MeshProxy

@Suite("Deadlines that move per request")
struct DeadlineTimerTests {
    @Test("a deadline never passes early; one moved later fires once, at the later time; a cleared one does not fire")
    func neverEarly() async throws {
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        let fired = try await loop.submit { () -> EventLoopFuture<[TimeAmount]> in
            let done = loop.makePromise(of: [TimeAmount].self)
            var firings: [TimeAmount] = []
            let start = NIODeadline.now()
            let timer = DeadlineTimer(eventLoop: loop) { firings.append(NIODeadline.now() - start) }
            timer.set(in: .milliseconds(20))
            timer.set(in: .milliseconds(60))   // moved later before the first passes
            let cleared = DeadlineTimer(eventLoop: loop) { firings.append(.zero) }
            cleared.set(in: .milliseconds(10))
            cleared.clear()
            // Long after both deadlines (and any task left for them) have passed:
            loop.assumeIsolated().scheduleTask(in: .milliseconds(300)) {
                timer.cancel()
                cleared.cancel()
                done.succeed(firings)
            }
            return done.futureResult
        }.get().get()
        #expect(fired.count == 1, "fired \(fired)")
        #expect(fired.allSatisfy { $0 >= .milliseconds(60) }, "fired after \(fired)")
    }
}
