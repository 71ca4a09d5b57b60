/// MeshKernel: a typed Swift API over libbpf for building eBPF service-mesh
/// agents — objects, typed maps, links that detach when released, pinning,
/// ring buffers as `AsyncSequence`, preflight checks, and cgroups.
///
/// See the DocC catalog (`Docs.docc`) for a getting-started article.
public enum MeshKernel {
    /// The version of libbpf MeshKernel was built against, such as `1.1`.
    public static var libbpfVersion: String {
        "\(cbpfMajor).\(cbpfMinor)"
    }
}

import CBPFShim

private let cbpfMajor = cbpf_libbpf_major_version()
private let cbpfMinor = cbpf_libbpf_minor_version()
