/// Why bpf2swift refused an object: names the C type and member and says what to change.
public struct GeneratorError: Error, CustomStringConvertible, Sendable {
    /// The explanation.
    public var description: String
    init(_ description: String) { self.description = description }
}
