/// Decodes standard base64 (RFC 4648, with padding), the form in which
/// ``EmbeddedBPFObject`` carries object files. Returns nil on malformed input.
func decodeBase64(_ text: String) -> [UInt8]? {
    let table = base64DecodingTable
    var output: [UInt8] = []
    output.reserveCapacity(text.utf8.count / 4 * 3)
    var accumulator: UInt32 = 0
    var bits = 0
    var padding = 0
    for character in text.utf8 {
        if character == UInt8(ascii: "=") {
            padding += 1
            continue
        }
        let value = table[Int(character)]
        guard value != 0xFF, padding == 0 else { return nil }
        accumulator = (accumulator << 6) | UInt32(value)
        bits += 6
        if bits >= 8 {
            bits -= 8
            output.append(UInt8(truncatingIfNeeded: accumulator >> UInt32(bits)))
        }
    }
    guard padding <= 2 else { return nil }
    return output
}

/// Each byte's 6-bit value in the base64 alphabet, 0xFF for bytes outside it.
private let base64DecodingTable: [UInt8] = {
    var table = [UInt8](repeating: 0xFF, count: 256)
    for (index, character) in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8.enumerated() {
        table[Int(character)] = UInt8(index)
    }
    return table
}()
