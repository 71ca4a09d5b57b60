import NIOCore
import NIOEmbedded
import Testing
@testable import MeshProxy

@Suite("Idle connections noticed without a clock read per event")
struct IdleWatchTests {
    @Test("silence acts after the timeout and at most a quarter more; activity starts the silence over; a stopped watch never acts")
    func silence() {
        let loop = EmbeddedEventLoop()
        var actedAt: [TimeAmount] = []
        let start = loop.now
        let watch = IdleWatch(timeout: .milliseconds(400))
        watch.start(on: loop) { actedAt.append(loop.now - start) }
        loop.advanceTime(by: .milliseconds(399))
        #expect(actedAt.isEmpty, "acted before the timeout")
        loop.advanceTime(by: .milliseconds(1))
        #expect(actedAt == [.milliseconds(400)])
        loop.advanceTime(by: .seconds(2))
        #expect(actedAt.count == 1, "acted again: \(actedAt)")

        // Restarted, with activity at 350 ms and 760 ms: silence from 760 ms on, so it acts in [1160, 1260] ms.
        actedAt = []
        let restart = loop.now
        watch.start(on: loop) { actedAt.append(loop.now - restart) }
        loop.advanceTime(by: .milliseconds(350))
        watch.noteActivity()
        loop.advanceTime(by: .milliseconds(410))
        watch.noteActivity()
        loop.advanceTime(by: .milliseconds(399))
        #expect(actedAt.isEmpty, "acted within the timeout of the last activity")
        loop.advanceTime(by: .milliseconds(101))
        #expect(actedAt.count == 1 && actedAt.allSatisfy { $0 >= .milliseconds(1_160) && $0 <= .milliseconds(1_260) }, "\(actedAt)")

        // Started again while running: the silence counts from the restart, and only the new action runs.
        var first = false, second = false
        let restarted = IdleWatch(timeout: .milliseconds(400))
        restarted.start(on: loop) { first = true }
        loop.advanceTime(by: .milliseconds(300))
        restarted.start(on: loop) { second = true }
        loop.advanceTime(by: .milliseconds(399))
        #expect(!first && !second, "acted within the timeout of the restart")
        loop.advanceTime(by: .milliseconds(101))
        #expect(!first && second)

        IdleWatch(timeout: .milliseconds(400)).stop()   // stopped before it started: nothing to stop
        let stopped = IdleWatch(timeout: .milliseconds(400))
        var stoppedActed = false
        stopped.start(on: loop) { stoppedActed = true }
        stopped.stop()
        loop.advanceTime(by: .seconds(2))
        #expect(!stoppedActed)
    }
}
