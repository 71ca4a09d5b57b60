import Testing
@testable import MeshProxy

@Suite("When a splice loop polls before it sleeps")
struct AdaptiveSpinTests {
    @Test("a budget of zero never polls")
    func zeroBudget() {
        var spin = AdaptiveSpin(budget: 0)
        var polls = 0
        for _ in 0..<100 where spin.shouldPoll() { polls += 1 }
        #expect(polls == 0)
    }

    @Test("polls while they find events; after a run of empty polls only every 32nd wait polls, and a few found events bring polling back")
    func learnsFromPolls() {
        var spin = AdaptiveSpin(budget: 3_000)
        // Half the polls find something (a request's answer does, the client's next request does not): it keeps polling.
        for round in 0..<200 {
            let polls = spin.shouldPoll()
            #expect(polls, "round \(round), rate \(spin.successRate)")
            spin.record(found: round % 2 == 0)
        }
        // An upstream that takes milliseconds: every poll comes back empty, and polling stops within a dozen waits.
        var polledWhileFailing = 0
        for _ in 0..<12 where spin.shouldPoll() {
            polledWhileFailing += 1
            spin.record(found: false)
        }
        #expect(polledWhileFailing <= 12 && spin.successRate < AdaptiveSpin.threshold)
        // From then on, one wait in 32 probes.
        var polls = 0
        for _ in 0..<(32 * 10) where spin.shouldPoll() {
            polls += 1
            spin.record(found: false)
        }
        #expect(polls == 10)
        // Probes that find events again: polling resumes on every wait after at most two of them.
        var probesFound = 0
        for _ in 0..<(32 * 3) where spin.shouldPoll() {
            probesFound += 1
            spin.record(found: true)
            if spin.successRate >= AdaptiveSpin.threshold { break }
        }
        #expect(probesFound <= 2 && spin.successRate >= AdaptiveSpin.threshold, "\(probesFound) probes, rate \(spin.successRate)")
        var pollsNow = 0
        for _ in 0..<10 where spin.shouldPoll() { pollsNow += 1 }
        #expect(pollsNow == 10)
    }
}
