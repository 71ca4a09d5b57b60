import Foundation
import MeshKernel
import MeshTestSupport
import Testing

@Suite("Examples run as a user would run them", .kernel, .serialized)
struct ExampleTests {
    @Test("syscall-counter (bpf2swift on a program outside the mesh) counts its own process and detaches")
    func syscallCounter() throws {
        let tool = buildProductsDirectory.appendingPathComponent("syscall-counter").path
        let result = try run([tool, "0.3"], timeout: .seconds(30)).check()
        let calls = result.output.split(separator: " ").first.flatMap { Int($0) } ?? 0
        #expect(calls > 0, "\(result.output)")
        #expect(result.output.contains("system calls in 0.3 s"))
        // Its program is gone from the kernel once it exits (freed asynchronously: poll).
        #expect(try eventually { try run(["bpftool", "prog", "show", "name", "count_syscall"]).output.isEmpty })
    }

    @Test("mesh-demo moves data through the sockmap shortcut and leaves nothing attached")
    func demo() throws {
        let tool = buildProductsDirectory.appendingPathComponent("mesh-demo").path
        let result = try run([tool], timeout: .seconds(60)).check()
        #expect(result.output.contains("[accelerated]"))
        #expect(result.output.contains("insert failures 0"))
        #expect(result.output.contains("attached now: []"))
    }
}
