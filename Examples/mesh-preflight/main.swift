// mesh-preflight: checks that this machine and process can run a BPF mesh,
// prints each requirement with its fix, and tries to create a map.
// Exits 0 when everything is in place, 1 otherwise.
import MeshKernel
#if canImport(Glibc)
import Glibc
#endif

let report = SystemCheck.run()
print(report)
var healthy = report.failures.isEmpty
do {
    let map = try BPFMap.create(.array, name: "mesh_preflight", keySize: 4, valueSize: 8, maxEntries: 1)
    print("ok   create map: id \(map.id)")
} catch {
    print("FAIL create map: \(error.code), \(error.errno?.name ?? "-")\(error.hint.map { " — fix: \($0)" } ?? "")")
    healthy = false
}
if !healthy { exit(1) }
