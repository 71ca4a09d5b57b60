/// Whether a splice loop that just moved bytes polls for its next event for a
/// moment before it sleeps, learned from how such polls have fared.
///
/// A request spliced to a nearby upstream is often answered within a few
/// microseconds of being sent on. A loop that sleeps at once is then woken
/// again straight away, and a sleep and a wake-up cost more than those
/// microseconds of polling: on this project's VM, a wake-up of an idle
/// virtual CPU. Polling for up to ``budget`` catches such an answer;
/// polling for an upstream that takes milliseconds only wastes the budget.
/// So the loop polls while at least a quarter of its recent polls found
/// something (a moving average over about eight polls), and otherwise polls
/// only every 32nd wait, to notice when polling pays again. Idle, it never
/// polls: only a wait after bytes moved may.
struct AdaptiveSpin {
    /// The longest poll before sleeping, in nanoseconds; 0 never polls.
    var budget: Int64
    /// Recent polls that found an event, in 256ths (a moving average, weight ⅛).
    private(set) var successRate = 256
    /// Waits without a poll since the last one.
    private var skipped = 0

    /// The rate below which the loop stops polling (but for the probes): a quarter.
    static let threshold = 64
    /// A poll is tried at least once in this many waits after bytes moved.
    static let probeInterval = 32

    init(budget: Int64) { self.budget = budget }

    /// Whether to poll before this wait.
    mutating func shouldPoll() -> Bool {
        guard budget > 0 else { return false }
        if successRate >= Self.threshold || skipped + 1 >= Self.probeInterval {
            skipped = 0
            return true
        }
        skipped += 1
        return false
    }

    /// Learns what a poll found.
    mutating func record(found: Bool) {
        successRate += ((found ? 256 : 0) - successRate) / 8
    }
}
