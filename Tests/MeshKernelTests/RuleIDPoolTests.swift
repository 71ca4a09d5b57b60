@testable import MeshKernel
import Testing

@Suite("Rule ids of a policy")
struct RuleIDPoolTests {
    @Test("ids never handed out go first, then freed ones oldest first; a request larger than what is left takes nothing")
    func order() {
        var pool = RuleIDPool()
        #expect(pool.take(3) == [1, 2, 3])
        pool.giveBack([2, 1])
        #expect(pool.take(2) == [4, 5], "fresh ids before freed ones")
        let rest = pool.take(Int(UInt16.max) - 6) ?? []
        #expect(rest.count == Int(UInt16.max) - 6 && rest.first == 6 && rest.last == UInt16.max - 1, "0xFFFF is the programs' 'no rule'")
        #expect(pool.take(3) == nil, "two freed ids cannot serve three")
        #expect(pool.take(2) == [2, 1], "freed ids in the order they were given back")
        #expect(pool.take(1) == nil)
    }
}
