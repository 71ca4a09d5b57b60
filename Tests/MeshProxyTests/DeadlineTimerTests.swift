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
            var finished = false
            let start = NIODeadline.now()
            let cleared = DeadlineTimer(eventLoop: loop) { firings.append(.zero) }
            var timer: DeadlineTimer?
            var fallback: Scheduled<Void>?
            func finish() {
                guard !finished else { return }
                finished = true
                fallback?.cancel()
                timer?.cancel()
                cleared.cancel()
                done.succeed(firings)
            }
            timer = DeadlineTimer(eventLoop: loop) {
                firings.append(NIODeadline.now() - start)
                // Time for a second firing, which must not come, then the answer.
                loop.assumeIsolated().scheduleTask(in: .milliseconds(100)) { finish() }
            }
            timer?.set(in: .milliseconds(20))
            timer?.set(in: .milliseconds(60))   // moved later before the first passes
            cleared.set(in: .milliseconds(10))
            cleared.clear()
            // (Should the timer never fire, the test ends anyway, and fails.)
            fallback = loop.assumeIsolated().scheduleTask(in: .seconds(10)) { finish() }
            return done.futureResult
        }.get().get()
        #expect(fired.count == 1, "fired \(fired)")
        #expect(fired.allSatisfy { $0 >= .milliseconds(60) }, "fired after \(fired)")
    }
}
