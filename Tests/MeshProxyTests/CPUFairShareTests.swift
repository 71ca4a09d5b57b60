@testable import MeshProxy
import Testing

/// The fair-share rules on their own, with usage made up: who is demoted, and the nice values that follow.
@Suite("CPU fair share: demoting tenants over their share")
struct CPUFairShareTests {
    private let period: Duration = .milliseconds(100)

    /// A tenant of `weight` that used `milliseconds` of CPU in the period, ran `runs` times and waited `waited` milliseconds for one in all.
    private func usage(_ weight: Int, cpu milliseconds: Double, waited: Double = 0, runs: Int = 100) -> CPUFairShare.Usage {
        CPUFairShare.Usage(weight: weight, cpu: .microseconds(Int(milliseconds * 1_000)), waited: .microseconds(Int(waited * 1_000)), runs: runs)
    }

    private func demoted(_ usage: [String: CPUFairShare.Usage], cpus: Int = 1, before: Set<String> = []) -> Set<String> {
        CPUFairShare.demoted(usage, period: period, cpus: cpus, before: before)
    }

    @Test("a tenant far over its share is demoted while a tenant under its share waits for a CPU, not while none waits")
    func entry() {
        let flood = ["noisy": usage(1, cpu: 95), "quiet": usage(1, cpu: 5, waited: 15)]
        #expect(demoted(flood) == ["noisy"])
        // The quiet tenant got the CPU at once: nobody is held back, nobody demoted.
        let unhurried = ["noisy": usage(1, cpu: 95), "quiet": usage(1, cpu: 5, waited: 0.3)]
        #expect(demoted(unhurried).isEmpty)
        // Both flooding, neither 1.25 times over its share: the one under it waits, but nobody is demoted.
        let bothFlooding = ["a": usage(1, cpu: 60, waited: 90), "b": usage(1, cpu: 40, waited: 90)]
        #expect(demoted(bothFlooding).isEmpty)
        // Waits under 1% of the period in all do not hold a tenant back, however long each: 2 of 400 µs.
        let twoWaits = ["noisy": usage(1, cpu: 95), "quiet": usage(1, cpu: 0.5, waited: 0.8, runs: 2)]
        #expect(demoted(twoWaits).isEmpty)
        #expect(demoted(["noisy": usage(1, cpu: 95), "quiet": usage(1, cpu: 0.5, waited: 1.2, runs: 3)]) == ["noisy"])
        // Two busy tenants on one CPU: what holds a tenant back is the time it waited, not its mean wait. One that
        // ran 1,000 times and waited a whole tick (4 ms) once, 4 µs a run on average, is held back (measured so in a
        // release build beside a flood that left the CPU idle now and then: its p99 rose 1.3 to 3 times undemoted).
        let diluted = ["noisy": usage(1, cpu: 95), "quiet": usage(1, cpu: 10, waited: 4, runs: 1_000)]
        #expect(demoted(diluted) == ["noisy"])
        // With a CPU for each (and the CPUs busy all the same: 105 ms of two CPUs' 200), 4 µs a run is the
        // tenant's own wake-ups, not another tenant in the way: not held back; a long mean wait still is.
        #expect(demoted(diluted, cpus: 2).isEmpty)
        #expect(demoted(diluted, cpus: 16).isEmpty)
        let waitedLong = ["noisy": usage(1, cpu: 95), "quiet": usage(1, cpu: 10, waited: 4, runs: 50)]
        #expect(demoted(waitedLong, cpus: 2) == ["noisy"])
    }

    @Test("with the tenants' CPUs mostly idle, a tenant that waits waits for other processes: nobody is demoted, and a demoted tenant is restored")
    func busyCPUs() {
        // Two busy threads use two CPUs at most: one CPU's worth is half of what they can use, on any machine.
        let flood = ["noisy": usage(1, cpu: 95), "quiet": usage(1, cpu: 5, waited: 15)]
        #expect(demoted(flood, cpus: 16) == ["noisy"])
        // A third busy tenant: three threads could use three CPUs, of which the tenants used one.
        var three = flood
        three["third"] = usage(1, cpu: 1)
        #expect(demoted(three, cpus: 1) == ["noisy"])
        #expect(demoted(three, cpus: 2) == ["noisy"])
        #expect(demoted(three, cpus: 16).isEmpty)
        #expect(demoted(three, cpus: 16, before: ["noisy"]).isEmpty)
    }

    @Test("shares follow the weights: a heavier tenant using its larger share is not over it")
    func weightedShares() {
        // 1:3 and using 1:3: each at its share, the lighter one waiting.
        let byWeight = ["light": usage(1, cpu: 25, waited: 90), "heavy": usage(3, cpu: 75, waited: 10)]
        #expect(demoted(byWeight).isEmpty)
        // 3:1 weights the other way round: the weight-1 tenant using 75% is three times its share.
        let inverted = ["light": usage(1, cpu: 75), "heavy": usage(3, cpu: 10, waited: 40)]
        #expect(demoted(inverted) == ["light"])
    }

    @Test("a demoted tenant stays demoted while over its share, however briefly others then wait, and is restored under it or alone")
    func exit() {
        // Demoted, the quiet tenant no longer waits; the noisy one is still over its share: it stays.
        let afterDemotion = ["noisy": usage(1, cpu: 95), "quiet": usage(1, cpu: 5, waited: 0.2)]
        #expect(demoted(afterDemotion, before: ["noisy"]) == ["noisy"])
        // Between 1 and 1.25 times its share it stays too (it would not be demoted anew).
        let near = ["noisy": usage(1, cpu: 55), "quiet": usage(1, cpu: 45, waited: 0.2)]
        #expect(demoted(near, before: ["noisy"]) == ["noisy"])
        #expect(demoted(near).isEmpty)
        // Under its share: restored.
        let under = ["noisy": usage(1, cpu: 45), "quiet": usage(1, cpu: 55, waited: 0.2)]
        #expect(demoted(under, before: ["noisy"]).isEmpty)
        // Alone (the other idle, below 0.1% of the period): nobody to protect, restored.
        let alone = ["noisy": usage(1, cpu: 95), "quiet": usage(1, cpu: 0.05, waited: 50)]
        #expect(demoted(alone, before: ["noisy"]).isEmpty)
        #expect(demoted(alone).isEmpty)
    }

    @Test("nice values: by weight; demoted tenants at the bottom of the kernel's range, keeping their weights among themselves, above no tenant kept")
    func niceness() {
        let weights = ["quiet": 1, "a": 1, "b": 3]
        #expect(CPUFairShare.niceness(weights: weights, demoted: [], base: 0) == ["quiet": 5, "a": 5, "b": 0])
        // a and b demoted: b (weight 3) at 14, a five levels lower at 19; quiet unchanged.
        #expect(CPUFairShare.niceness(weights: weights, demoted: ["a", "b"], base: 0) == ["quiet": 5, "a": 19, "b": 14])
        #expect(CPUFairShare.niceness(weights: ["quiet": 1, "noisy": 1], demoted: ["noisy"], base: 0) == ["quiet": 0, "noisy": 19])
        // From a process at nice -5.
        #expect(CPUFairShare.niceness(weights: ["quiet": 1, "noisy": 1], demoted: ["noisy"], base: -5) == ["quiet": -5, "noisy": 19])
        // Weights spanning the whole range: the demoted ones go no higher than the lightest tenant kept (19 here).
        #expect(CPUFairShare.niceness(weights: ["heavy": 100, "middle": 10, "light": 1], demoted: ["heavy", "middle"], base: 0)
                == ["heavy": 19, "middle": 19, "light": 19])
        #expect(CPUFairShare.niceness(weights: ["heavy": 100, "middle": 10, "light": 1], demoted: ["heavy"], base: 0)
                == ["heavy": 19, "middle": 10, "light": 19])
    }
}
